// Resize + normalise of one image into its batch slot (crosslayer/prepare_image.h).
//
// The arithmetic reimplements Pillow's two-pass fixed-point resampling: the coefficients in double precision exactly
// as Pillow forms them (same expression order: this file is compiled with -ffp-contract=off, so no multiply-add is
// fused where Pillow's plain x86-64 build rounds twice), then integer sums, in Pillow 13's order of the passes. Only
// the output window is computed: for center-crop the columns and rows cut away are skipped, and the first pass runs
// only over the source rows (or columns) the kept outputs read. Horizontal first, the intermediate is planar, so the
// vertical pass and the normalisation run on contiguous runs of one channel, 16 values at a time with AVX-512;
// vertical first, the vertical pass runs on the interleaved bytes of each source row as they are. The horizontal
// pass picks its taps with AVX-512 VBMI byte permutations (HorizontalPass).
#include "crosslayer/prepare_image.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace crosslayer {
namespace {

constexpr int kPrecisionBits = 22;  // Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
constexpr std::int32_t kHalf = std::int32_t{1} << (kPrecisionBits - 1);
constexpr std::int32_t kUnit = std::int32_t{1} << kPrecisionBits;

// Python's round() of a float: half to even (std::nearbyint would depend on the thread's rounding mode).
std::int64_t round_half_even(double value) {
  const double lower = std::floor(value);
  const double fraction = value - lower;  // exact
  const auto base = static_cast<std::int64_t>(lower);
  if (fraction > 0.5) return base + 1;
  if (fraction < 0.5) return base;
  return (base % 2 == 0) ? base : base + 1;
}

std::int64_t floor_div2(std::int64_t value) { return value >= 0 ? value / 2 : -((-value + 1) / 2); }

// The part of Pillow's full resize that lands on the side x side output.
struct Window {
  std::int64_t scaled_w = 0, scaled_h = 0;    // the size Pillow resizes to
  std::int64_t first_col = 0, first_row = 0;  // the window's origin in the resized image (center-crop)
  std::int64_t cols = 0, rows = 0;            // the window's size
  std::int64_t left = 0, top = 0;             // its place on the output (pad)
};

Window window_of(std::int64_t height, std::int64_t width, std::int64_t side, ResizePolicy policy) {
  Window window;
  if (policy == ResizePolicy::kSquare) {
    window.scaled_w = window.scaled_h = window.cols = window.rows = side;
    return window;
  }
  const bool crop = policy == ResizePolicy::kCenterCrop;
  const double scale = double(side) / double(crop ? std::min(height, width) : std::max(height, width));
  window.scaled_w = std::max<std::int64_t>(1, round_half_even(double(width) * scale));
  window.scaled_h = std::max<std::int64_t>(1, round_half_even(double(height) * scale));
  if (crop) {
    window.first_col = floor_div2(window.scaled_w - side);
    window.first_row = floor_div2(window.scaled_h - side);
    window.cols = window.rows = side;
  } else {
    window.left = floor_div2(side - window.scaled_w);
    window.top = floor_div2(side - window.scaled_h);
    window.cols = window.scaled_w;
    window.rows = window.scaled_h;
  }
  return window;
}

// One axis of the resize: for each kept output, its first input index, its number of taps and their fixed-point
// weights (ksize per output, zero past the count).
struct AxisTaps {
  std::int64_t ksize = 0;
  std::vector<std::int64_t> first;
  std::vector<std::int32_t> count;
  std::vector<std::int32_t> weights;

  std::int64_t lowest_input() const { return first.empty() ? 0 : first.front(); }
  std::int64_t end_input() const {  // one past the last input any kept output reads
    std::int64_t end = 0;
    for (std::size_t i = 0; i < first.size(); ++i) end = std::max(end, first[i] + count[i]);
    return end;
  }
};

double triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's coefficients for outputs [first_out, first_out + outputs) of a resize from in_size to out_size.
AxisTaps bilinear_taps(std::int64_t in_size, std::int64_t out_size, std::int64_t first_out, std::int64_t outputs) {
  // Pillow takes the input extent as a float box edge and the sizes as int
  const float box_end = static_cast<float>(in_size);
  const double scale = static_cast<double>(box_end - 0.0f) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  AxisTaps taps;
  taps.ksize = static_cast<std::int64_t>(std::ceil(support)) * 2 + 1;
  taps.first.resize(outputs);
  taps.count.resize(outputs);
  taps.weights.assign(outputs * taps.ksize, 0);
  std::vector<double> w(taps.ksize);
  const double inverse = 1.0 / filterscale;
  for (std::int64_t i = 0; i < outputs; ++i) {
    const std::int64_t xx = first_out + i;
    const double center = 0.0 + (double(xx) + 0.5) * scale;
    auto xmin = static_cast<std::int64_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    auto xmax = static_cast<std::int64_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    xmax = std::min(xmax, taps.ksize);  // never reached: the support bounds the span
    double sum = 0.0;
    for (std::int64_t x = 0; x < xmax; ++x) {
      w[x] = triangle((double(x + xmin) - center + 0.5) * inverse);
      sum += w[x];
    }
    std::int32_t* fixed = &taps.weights[i * taps.ksize];
    for (std::int64_t x = 0; x < xmax; ++x) {
      const double weight = sum != 0.0 ? w[x] / sum : w[x];
      const double scaled = weight * double(kUnit);
      fixed[x] = static_cast<std::int32_t>(weight < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    taps.first[i] = xmin;
    taps.count[i] = static_cast<std::int32_t>(std::max<std::int64_t>(xmax, 0));
  }
  return taps;
}

// An axis that keeps its size: each output reads its own input with weight 1.
AxisTaps identity_taps(std::int64_t first_out, std::int64_t outputs) {
  AxisTaps taps;
  taps.ksize = 1;
  taps.first.resize(outputs);
  taps.count.assign(outputs, 1);
  taps.weights.assign(outputs, kUnit);
  for (std::int64_t i = 0; i < outputs; ++i) taps.first[i] = first_out + i;
  return taps;
}

inline std::uint8_t clip8(std::int32_t sum) {
  const std::int32_t value = sum >> kPrecisionBits;
  return static_cast<std::uint8_t>(value < 0 ? 0 : (value > 255 ? 255 : value));
}

// Rows of height x width x 3 pixels, each row width*3 contiguous bytes (pixel stride 3, channel stride 1).
struct Rows {
  const std::uint8_t* pixels;
  std::int64_t row_stride;
  const std::uint8_t* row(std::int64_t y) const { return pixels + y * row_stride; }
};

// Horizontal pass of outputs [begin, end) of one interleaved row (pixel stride 3) whose first pixel is input column
// `origin`, into three channel rows (Pillow's 8-bit result).
void horizontal_outputs(const std::uint8_t* row, std::int64_t origin, const AxisTaps& taps, std::int64_t begin,
                        std::int64_t end, std::uint8_t* out0, std::uint8_t* out1, std::uint8_t* out2) {
  for (std::int64_t x = begin; x < end; ++x) {
    const std::int32_t* k = &taps.weights[x * taps.ksize];
    const std::uint8_t* p = row + 3 * (taps.first[x] - origin);
    std::int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
    for (std::int32_t t = 0; t < taps.count[x]; ++t, p += 3) {
      s0 += std::int32_t(p[0]) * k[t];
      s1 += std::int32_t(p[1]) * k[t];
      s2 += std::int32_t(p[2]) * k[t];
    }
    out0[x] = clip8(s0);
    out1[x] = clip8(s1);
    out2[x] = clip8(s2);
  }
}

// The horizontal pass of every row of an image, 16 outputs of one channel at a time with AVX-512 VBMI where their
// taps lie within 128 bytes of the interleaved row: a byte permutation picks each tap's 16 input values out of two
// 64-byte loads (no gather), then 32-bit multiply-adds as in the scalar pass. Blocks whose taps spread wider (a
// reduction by more than ~2.3x) take the scalar pass. The per-block permutations and weights are made once an image.
constexpr std::int64_t kWindow = 128;  // bytes a block's taps may span; rows given to `run` are readable this far

class HorizontalPass {
 public:
  HorizontalPass(const AxisTaps& taps, std::int64_t cols, std::int64_t origin, bool vbmi)
      // beyond a 5x reduction (support > 5) no 16 outputs fit a window: do not build tables no block can use
      : taps_(taps), cols_(cols), origin_(origin), vbmi_(vbmi && taps.ksize <= 11) {
    if (!vbmi_) return;
    const std::int64_t blocks = (cols + 15) / 16, k = taps.ksize;
    base_.assign(blocks, -1);
    index_.assign(blocks * 3 * k * 64, 0);
    weight_.assign(blocks * k * 16, 0);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t x0 = 16 * b, base = 3 * (taps.first[x0] - origin);
      bool fits = true;
      for (std::int64_t lane = 0; lane < 16 && x0 + lane < cols; ++lane) {
        const std::int64_t x = x0 + lane;
        for (std::int64_t t = 0; t < taps.count[x]; ++t) {
          const std::int64_t byte = 3 * (taps.first[x] + t - origin) - base;
          if (byte < 0 || byte + 2 >= kWindow) fits = false;
          if (!fits) break;
          for (int c = 0; c < 3; ++c) index_[((b * 3 + c) * k + t) * 64 + lane] = std::uint8_t(byte + c);
          weight_[(b * k + t) * 16 + lane] = taps.weights[x * k + t];
        }
      }
      if (fits) base_[b] = base;
    }
  }

  // One row of interleaved pixels starting at input column `origin`, readable kWindow bytes past its last pixel.
  void run(const std::uint8_t* row, std::uint8_t* out0, std::uint8_t* out1, std::uint8_t* out2) const {
    if (vbmi_) {
      run_vbmi(row, out0, out1, out2);
    } else {
      horizontal_outputs(row, origin_, taps_, 0, cols_, out0, out1, out2);
    }
  }

 private:
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi"))) void run_vbmi(const std::uint8_t* row,
                                                                                  std::uint8_t* out0,
                                                                                  std::uint8_t* out1,
                                                                                  std::uint8_t* out2) const {
    std::uint8_t* out[3] = {out0, out1, out2};
    const std::int64_t k = taps_.ksize;
    const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
    for (std::int64_t b = 0; b < std::int64_t(base_.size()); ++b) {
      const std::int64_t x0 = 16 * b, n = std::min<std::int64_t>(16, cols_ - x0);
      if (base_[b] < 0) {
        horizontal_outputs(row, origin_, taps_, x0, x0 + n, out0, out1, out2);
        continue;
      }
      const __mmask16 mask = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
      const __m512i low = _mm512_loadu_si512(row + base_[b]), high = _mm512_loadu_si512(row + base_[b] + 64);
      for (int c = 0; c < 3; ++c) {
        __m512i sum = _mm512_set1_epi32(kHalf);
        for (std::int64_t t = 0; t < k; ++t) {
          const __m512i index = _mm512_loadu_si512(&index_[((b * 3 + c) * k + t) * 64]);
          const __m128i picked = _mm512_castsi512_si128(_mm512_permutex2var_epi8(low, index, high));
          const __m512i weight = _mm512_loadu_si512(&weight_[(b * k + t) * 16]);
          sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(picked), weight));
        }
        const __m512i value = _mm512_min_epi32(_mm512_max_epi32(_mm512_srai_epi32(sum, kPrecisionBits), zero), top);
        _mm512_mask_cvtepi32_storeu_epi8(out[c] + x0, mask, value);
      }
    }
  }

  const AxisTaps& taps_;
  std::int64_t cols_, origin_;
  bool vbmi_;
  std::vector<std::int64_t> base_;    // [block] the window's first byte in the row, -1: the scalar pass
  std::vector<std::uint8_t> index_;   // [block][channel][tap][64] byte of the window each lane takes
  std::vector<std::int32_t> weight_;  // [block][tap][16] fixed-point weight of each lane (0 past its taps)
};

// Vertical pass for output i over `length` contiguous values a row: input row j starts at rows + (j - row0) * step.
// Writes the clipped values to `values` (may be NULL) and float(value) * scale - offset to `out` (may be NULL).
// `sums` is scratch of `length` int32.
struct VerticalJob {
  const std::uint8_t* rows;
  std::int64_t step, row0, length;
  std::uint8_t* values;
  float* out;
  float scale, offset;
};

void vertical_row_scalar(const VerticalJob& job, const AxisTaps& taps, std::int64_t i, std::int32_t* sums) {
  const std::int32_t* k = &taps.weights[i * taps.ksize];
  const std::uint8_t* first = job.rows + (taps.first[i] - job.row0) * job.step;
  std::fill(sums, sums + job.length, kHalf);
  for (std::int32_t t = 0; t < taps.count[i]; ++t) {
    const std::uint8_t* row = first + t * job.step;
    const std::int32_t weight = k[t];
    for (std::int64_t x = 0; x < job.length; ++x) sums[x] += std::int32_t(row[x]) * weight;
  }
  for (std::int64_t x = 0; x < job.length; ++x) {
    const std::uint8_t value = clip8(sums[x]);
    if (job.values) job.values[x] = value;
    if (job.out) {
      const float product = float(value) * job.scale;
      job.out[x] = product - job.offset;
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void vertical_row_avx512(const VerticalJob& job,
                                                                              const AxisTaps& taps, std::int64_t i,
                                                                              std::int32_t*) {
  const std::int32_t* k = &taps.weights[i * taps.ksize];
  const std::uint8_t* first = job.rows + (taps.first[i] - job.row0) * job.step;
  const std::int32_t count = taps.count[i];
  const __m512 scale16 = _mm512_set1_ps(job.scale), offset16 = _mm512_set1_ps(job.offset);
  const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
  for (std::int64_t x = 0; x < job.length; x += 16) {
    const __mmask16 mask = job.length - x >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (job.length - x)) - 1);
    __m512i sum = _mm512_set1_epi32(kHalf);
    for (std::int32_t t = 0; t < count; ++t) {
      const __m512i pixels = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, first + t * job.step + x));
      sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(pixels, _mm512_set1_epi32(k[t])));
    }
    const __m512i value = _mm512_min_epi32(_mm512_max_epi32(_mm512_srai_epi32(sum, kPrecisionBits), zero), top);
    if (job.values) _mm512_mask_cvtepi32_storeu_epi8(job.values + x, mask, value);
    if (job.out) {
      const __m512 product = _mm512_mul_ps(_mm512_cvtepi32_ps(value), scale16);
      _mm512_mask_storeu_ps(job.out + x, mask, _mm512_sub_ps(product, offset16));
    }
  }
}

// float(value) * scale - offset for a row of values.
void normalise_row_scalar(const std::uint8_t* values, std::int64_t length, float scale, float offset, float* out) {
  for (std::int64_t x = 0; x < length; ++x) {
    const float product = float(values[x]) * scale;
    out[x] = product - offset;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void normalise_row_avx512(const std::uint8_t* values,
                                                                               std::int64_t length, float scale,
                                                                               float offset, float* out) {
  const __m512 scale16 = _mm512_set1_ps(scale), offset16 = _mm512_set1_ps(offset);
  for (std::int64_t x = 0; x < length; x += 16) {
    const __mmask16 mask = length - x >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (length - x)) - 1);
    const __m512 value = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, values + x)));
    _mm512_mask_storeu_ps(out + x, mask, _mm512_sub_ps(_mm512_mul_ps(value, scale16), offset16));
  }
}

struct Kernels {
  void (*vertical_row)(const VerticalJob&, const AxisTaps&, std::int64_t, std::int32_t*);
  void (*normalise_row)(const std::uint8_t*, std::int64_t, float, float, float*);
  bool vbmi;  // the horizontal pass's byte permutations
};

bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}

bool cpu_has_avx512_vbmi() {
  static const bool yes = cpu_has_avx512() && __builtin_cpu_supports("avx512vbmi");
  return yes;
}

// Where one output row of the window goes.
struct Destination {
  const PrepareImageArgs& args;
  const Window& window;
  float* out(int c, std::int64_t i) const {
    return args.out ? args.out + (c * args.side + window.top + i) * args.side + window.left : nullptr;
  }
  void resized(int c, std::int64_t i, const std::uint8_t* values) const {
    if (!args.out_resized) return;
    std::uint8_t* pixel = args.out_resized + ((window.top + i) * args.side + window.left) * 3 + c;
    for (std::int64_t x = 0; x < window.cols; ++x) pixel[3 * x] = values[x];
  }
};

// Pillow's usual order: the horizontal pass over the source rows the kept output rows read (into three planes),
// then the vertical pass, normalised as it is written.
void horizontal_then_vertical(const Rows& source, const AxisTaps& column_taps, const AxisTaps& row_taps,
                              const Destination& to, const Kernels& kernels) {
  const std::int64_t cols = to.window.cols;
  const std::int64_t row0 = row_taps.lowest_input(), rows = row_taps.end_input() - row0;
  std::unique_ptr<std::uint8_t[]> planes(new std::uint8_t[3 * rows * cols]);
  const std::int64_t col0 = column_taps.lowest_input(), span = column_taps.end_input() - col0;
  const HorizontalPass pass(column_taps, cols, col0, kernels.vbmi);
  std::vector<std::uint8_t> padded(3 * span + kWindow, 0);  // a source row, readable past its end
  for (std::int64_t r = 0; r < rows; ++r) {
    std::memcpy(padded.data(), source.row(row0 + r) + 3 * col0, 3 * span);
    pass.run(padded.data(), planes.get() + r * cols, planes.get() + (rows + r) * cols,
             planes.get() + (2 * rows + r) * cols);
  }
  std::vector<std::int32_t> sums(cols);
  std::vector<std::uint8_t> values(to.args.out_resized ? cols : 0);
  for (std::int64_t i = 0; i < to.window.rows; ++i) {
    for (int c = 0; c < 3; ++c) {
      const VerticalJob job{planes.get() + c * rows * cols, cols, row0, cols, values.empty() ? nullptr : values.data(),
                            to.out(c, i), to.args.scale[c], to.args.offset[c]};
      kernels.vertical_row(job, row_taps, i, sums.data());
      to.resized(c, i, values.data());
    }
  }
}

// The other order (Pillow 13 takes it when the height shrinks much more than the width, and it is the only pass
// when the width keeps its size): each output row's vertical pass over the interleaved source columns the kept
// output columns read, then its horizontal pass (or, without one, the window's columns), normalised.
void vertical_then_horizontal(const Rows& source, const AxisTaps* column_taps, std::int64_t first_col,
                              const AxisTaps& row_taps, const Destination& to, const Kernels& kernels) {
  const std::int64_t cols = to.window.cols;
  const std::int64_t col0 = column_taps ? column_taps->lowest_input() : first_col;
  const std::int64_t span = column_taps ? column_taps->end_input() - col0 : cols;
  std::vector<std::uint8_t> row(3 * span + kWindow, 0);
  std::unique_ptr<HorizontalPass> pass;
  if (column_taps) pass.reset(new HorizontalPass(*column_taps, cols, col0, kernels.vbmi));
  std::vector<std::int32_t> sums(3 * span);
  std::vector<std::uint8_t> values(3 * cols);
  std::uint8_t* channel[3] = {values.data(), values.data() + cols, values.data() + 2 * cols};
  // the vertical pass is the same sum for every byte of a row: it runs on the interleaved bytes as they are
  const VerticalJob job{source.pixels + 3 * col0, source.row_stride, 0, 3 * span, row.data(), nullptr, 0.0f, 0.0f};
  for (std::int64_t i = 0; i < to.window.rows; ++i) {
    kernels.vertical_row(job, row_taps, i, sums.data());
    if (column_taps) {
      pass->run(row.data(), channel[0], channel[1], channel[2]);
    } else {
      for (std::int64_t x = 0; x < cols; ++x)
        for (int c = 0; c < 3; ++c) channel[c][x] = row[3 * x + c];
    }
    for (int c = 0; c < 3; ++c) {
      if (float* out = to.out(c, i)) kernels.normalise_row(channel[c], cols, to.args.scale[c], to.args.offset[c], out);
      to.resized(c, i, channel[c]);
    }
  }
}

// pad: the canvas around the resized image, in the fill colour.
void fill_outside_window(const PrepareImageArgs& args, const Window& window) {
  const std::int64_t side = args.side;
  for (int c = 0; c < 3; ++c) {
    const float product = float(args.fill[c]) * args.scale[c];
    const float value = product - args.offset[c];
    auto fill = [&](std::int64_t y, std::int64_t begin, std::int64_t end) {
      for (std::int64_t x = begin; x < end; ++x) {
        if (args.out) args.out[(c * side + y) * side + x] = value;
        if (args.out_resized) args.out_resized[(y * side + x) * 3 + c] = args.fill[c];
      }
    };
    for (std::int64_t y = 0; y < side; ++y) {
      if (y < window.top || y >= window.top + window.rows) {
        fill(y, 0, side);
      } else {
        fill(y, 0, window.left);
        fill(y, window.left + window.cols, side);
      }
    }
  }
}

}  // namespace

bool prepare_path_supported(PreparePath path) {
  return path == PreparePath::kAuto || path == PreparePath::kScalar || (path == PreparePath::kAvx512 && cpu_has_avx512());
}

std::string prepare_image(const PrepareImageArgs& args) {
  if (args.pixels == nullptr) return "pixels: expected height x width x 3 uint8, got NULL";
  if (args.height < 1 || args.width < 1)
    return "height, width: expected >= 1, got " + std::to_string(args.height) + " x " + std::to_string(args.width);
  if (args.side < 1) return "side: expected >= 1, got " + std::to_string(args.side);
  const int policy = static_cast<int>(args.policy);
  if (policy < 0 || policy > 2) return "policy: expected 0 (square), 1 (center-crop) or 2 (pad), got " + std::to_string(policy);
  if (args.out == nullptr && args.out_resized == nullptr) return "out, out_resized: expected at least one, got NULL for both";
  const int path = static_cast<int>(args.path);
  if (path < 0 || path > 2) return "path: expected 0 (auto), 1 (scalar) or 2 (avx512), got " + std::to_string(path);
  if (!prepare_path_supported(args.path)) return "path: this CPU does not support the avx512 path";
  const bool avx512 = args.path == PreparePath::kAvx512 || (args.path == PreparePath::kAuto && cpu_has_avx512());
  const Kernels kernels = avx512 ? Kernels{vertical_row_avx512, normalise_row_avx512, cpu_has_avx512_vbmi()}
                                 : Kernels{vertical_row_scalar, normalise_row_scalar, false};

  const Window window = window_of(args.height, args.width, args.side, args.policy);
  if (window.first_col < 0 || window.first_row < 0 || window.left < 0 || window.top < 0)
    return "internal: the resize window falls outside the image";  // unreachable: see window_of

  // Interleaved rows for the passes; any other layout (a transposed or channel-reversed view) is copied once.
  std::unique_ptr<std::uint8_t[]> packed;
  Rows source{args.pixels, args.row_stride};
  if (args.pixel_stride != 3 || args.channel_stride != 1) {
    packed.reset(new std::uint8_t[args.height * args.width * 3]);
    for (std::int64_t y = 0; y < args.height; ++y)
      for (std::int64_t x = 0; x < args.width; ++x)
        for (int c = 0; c < 3; ++c)
          packed[(y * args.width + x) * 3 + c] =
              args.pixels[y * args.row_stride + x * args.pixel_stride + c * args.channel_stride];
    source = Rows{packed.get(), args.width * 3};
  }

  // Pillow resamples an axis only when its size changes, and (Pillow 13) runs the vertical pass first when the
  // height shrinks by more than twice what the width does.
  const bool horizontal = window.scaled_w != args.width;
  const bool vertical = window.scaled_h != args.height;
  const bool vertical_first =
      args.height > window.scaled_h && (args.height - window.scaled_h) > 2 * (args.width - window.scaled_w);
  const AxisTaps row_taps = vertical ? bilinear_taps(args.height, window.scaled_h, window.first_row, window.rows)
                                     : identity_taps(window.first_row, window.rows);
  const Destination to{args, window};
  if (horizontal) {
    const AxisTaps column_taps = bilinear_taps(args.width, window.scaled_w, window.first_col, window.cols);
    if (vertical && vertical_first) {
      vertical_then_horizontal(source, &column_taps, 0, row_taps, to, kernels);
    } else {
      horizontal_then_vertical(source, column_taps, row_taps, to, kernels);
    }
  } else {
    vertical_then_horizontal(source, nullptr, window.first_col, row_taps, to, kernels);
  }
  if (window.cols != args.side || window.rows != args.side) fill_outside_window(args, window);
  return "";
}

}  // namespace crosslayer
