// crosslayer/prepare_image.h — an image's network input in one pass: resize (Pillow's BILINEAR, exactly) and
// normalise, written straight into a caller's slot of the batch.
//
// Contract
//   Input: height x width x 3 uint8 pixels (RGB), element (y, x, c) at pixels + y*row_stride + x*pixel_stride +
//   c*channel_stride (strides in bytes, any sign: a numpy view of any layout). height, width >= 1.
//   Geometry (side >= 1), as crosslayer.images.resize computes it, in double precision with Python's round
//   (half to even):
//     square:      the image resized to side x side.
//     center-crop: s = side / min(h, w); resized to max(1, round(w*s)) x max(1, round(h*s)), then the middle
//                  side x side cut out (top = (new_h - side) // 2, left likewise).
//     pad:         s = side / max(h, w); resized likewise, then placed at top = (side - new_h) // 2, left likewise,
//                  on a side x side canvas of colour `fill`.
//   Resize: exactly Pillow's Image.resize(size, BILINEAR) on an RGB image (Pillow 8..13, src/libImaging/Resample.c):
//   per axis, for output i of n from an input of m, scale = m / n, support = max(scale, 1), centre = (i + 0.5)
//   * scale, taps from int(centre - support + 0.5) (>= 0) to int(centre + support + 0.5) (<= m), weights
//   max(0, 1 - |(j - centre + 0.5) / support|) in double, divided by their sum, then fixed point
//   int(w * 2^22 + 0.5); each value is (2^21 + sum weight * pixel) >> 22 clipped to 0..255. One pass runs on the
//   other's 8-bit result: the vertical one first when h > new_h and h - new_h > 2 * (w - new_w) (Pillow 13; checked
//   against Pillow on both sides of that boundary), the horizontal one first otherwise; an axis whose size does not
//   change is not resampled. Output pixels outside a crop are never computed (each depends only on its own taps, so the crop of
//   the whole resize is the same integers).
//   Normalise: out[c][y][x] = float(v) * scale[c] - offset[c] in float32, the product rounded before the
//   subtraction (no fused multiply-add), so the result is bit for bit numpy's `normalize` (images.normalization).
//   Outputs (either may be NULL, not both): out float32 [3][side][side] C-contiguous; out_resized uint8
//   [side][side][3] C-contiguous (the resized pixels before normalisation).
//   Paths: scalar; AVX-512 (F, BW, VL) for the vertical pass and the normalisation, plus VBMI byte permutations for
//   the horizontal pass where 16 outputs' taps lie within 128 bytes (reductions up to ~2.3x; wider ones and CPUs
//   without VBMI take the scalar horizontal pass).
//   Threads: one call runs on the calling thread only; no global state, so calls may run concurrently.
#pragma once
#include <cstdint>
#include <string>

namespace crosslayer {

enum class ResizePolicy : int { kSquare = 0, kCenterCrop = 1, kPad = 2 };
// Which instructions run the passes: kAuto picks the fastest the CPU supports; the others force one (tests compare
// them). Every path gives the same integers and floats.
enum class PreparePath : int { kAuto = 0, kScalar = 1, kAvx512 = 2 };

struct PrepareImageArgs {
  const std::uint8_t* pixels = nullptr;
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::int64_t row_stride = 0;      // bytes
  std::int64_t pixel_stride = 3;    // bytes
  std::int64_t channel_stride = 1;  // bytes
  std::int64_t side = 0;
  ResizePolicy policy = ResizePolicy::kSquare;
  std::uint8_t fill[3] = {0, 0, 0};  // pad's canvas colour
  float scale[3] = {1.0f, 1.0f, 1.0f};
  float offset[3] = {0.0f, 0.0f, 0.0f};
  float* out = nullptr;                 // [3][side][side] or NULL
  std::uint8_t* out_resized = nullptr;  // [side][side][3] or NULL
  PreparePath path = PreparePath::kAuto;
};

// An empty string on success, otherwise what was wrong with the arguments (nothing is written then).
std::string prepare_image(const PrepareImageArgs& args);

// Whether this CPU can run `path` (kAuto and kScalar always can).
bool prepare_path_supported(PreparePath path);

}  // namespace crosslayer
