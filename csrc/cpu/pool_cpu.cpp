// Fused cross-layer pooling on the CPU. See crosslayer/pool.h for the contract.
//
// Per image b:  xp = (X_b^T - mean) W            [positions x Dt]   (one GEMM; skipped without PCA)
//               P  = G_b xp                       [Dk x Dt]          (one GEMM)
//               epilogue on P in cache: L2 + signed sqrt (float) or sign packing (codes, 2-plane or compact).
// Batches with at least as many images as threads run one image per worker with single-threaded BLAS (no
// batch-sized scratch); smaller batches split each image's guidance channels across the workers instead.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "crosslayer/blas.h"
#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/pool.h"
#include "crosslayer/sign_pack.h"

namespace crosslayer {
namespace {

struct Plan {
  const PoolArgs& args;
  std::int64_t n, dt_in, dt, dk, positions;
  bool has_pca;
  // Finite inputs can still overflow float32 in the GEMMs (|P| > FLT_MAX, or inf - inf = NaN), and unscanned NaN/Inf
  // inputs propagate; the sign of such a value, or its normalisation, would be garbage, so the call fails instead.
  // Set by any worker, read at the end.
  std::atomic<bool>* not_finite;
  // Read once per call: a concurrent set_sign_pack_path cannot mix two paths within one batch.
  PackChannelFn pack;
};

// xp[positions][dt] = (X^T - mean) W for image b. Centring before the GEMM (not subtracting mean@W after) keeps
// float32 accuracy when activations have a large mean, as post-ReLU layers do. `centred` is [dt_in][positions].
void project_local(const Plan& plan, std::int64_t b, float* centred, float* xp) {
  const float* x = plan.args.local + b * plan.dt_in * plan.positions;
  for (std::int64_t c = 0; c < plan.dt_in; ++c) {
    const float m = plan.args.pca_mean[c];
    const float* src = x + c * plan.positions;
    float* dst = centred + c * plan.positions;
    for (std::int64_t i = 0; i < plan.positions; ++i) dst[i] = src[i] - m;
  }
  blas::sgemm(true, false, static_cast<int>(plan.positions), static_cast<int>(plan.dt), static_cast<int>(plan.dt_in),
              1.0f, centred, static_cast<int>(plan.positions), plan.args.pca_proj, static_cast<int>(plan.dt), 0.0f, xp,
              static_cast<int>(plan.dt));
}

// p[k_count][dt] = G_b[k_begin : k_begin+k_count] @ local features of image b.
void pool_channels(const Plan& plan, std::int64_t b, const float* xp, std::int64_t k_begin, std::int64_t k_count,
                   float* p) {
  const float* g = plan.args.guidance + (b * plan.dk + k_begin) * plan.positions;
  const int m = static_cast<int>(k_count), nn = static_cast<int>(plan.dt), kk = static_cast<int>(plan.positions);
  if (plan.has_pca) {
    blas::sgemm(false, false, m, nn, kk, 1.0f, g, kk, xp, nn, 0.0f, p, nn);
  } else {
    const float* x = plan.args.local + b * plan.dt_in * plan.positions;  // [dt][positions]
    blas::sgemm(false, true, m, nn, kk, 1.0f, g, kk, x, kk, 0.0f, p, nn);
  }
}

// Per-channel L2 normalisation, then v -> sign(v) sqrt(|v|), of p[k_count][dt] in place.
void normalise_channels(const Plan& plan, std::int64_t k_count, float* p) {
  const std::int64_t dt = plan.dt;
  for (std::int64_t k = 0; k < k_count; ++k) {
    float* v = p + k * dt;
    double sq = 0.0;
    for (std::int64_t j = 0; j < dt; ++j) sq += static_cast<double>(v[j]) * v[j];
    if (!std::isfinite(sq)) {  // a float32 square of a finite value always fits a double: an inf or NaN is in v
      plan.not_finite->store(true, std::memory_order_relaxed);
      continue;
    }
    if (sq == 0.0) continue;  // all-zero channel stays zero (no NaN)
    // In double: for |P| near FLT_MAX, 1/||P|| is below FLT_MIN and would lose precision as a float32 denormal.
    const double inv = 1.0 / std::sqrt(sq);
    for (std::int64_t j = 0; j < dt; ++j) {
      const float u = static_cast<float>(v[j] * inv);
      v[j] = std::copysign(std::sqrt(std::fabs(u)), u);
    }
  }
}

// 2-plane sign codes of channels [k_begin, k_begin + k_count) of image b from p[k_count][dt].
void pack_channels(const Plan& plan, std::int64_t b, std::int64_t k_begin, std::int64_t k_count, const float* p) {
  const std::int64_t dt = plan.dt;
  const std::int64_t wpp = words_per_plane(dt);
  std::uint64_t* out = plan.args.out_bits + (b * plan.dk + k_begin) * kPlanes * wpp;
  bool finite = true;
  for (std::int64_t k = 0; k < k_count; ++k) {
    std::uint64_t* channel = out + k * kPlanes * wpp;
    finite &= plan.pack(p + k * dt, dt, channel, channel + wpp).finite;
  }
  if (!finite) plan.not_finite->store(true, std::memory_order_relaxed);
}

// Compact codes of the same channels: their sign rows, and their live bits OR-ed into the image's live words, which
// clear_live_words zeroed before any worker started.
//
// Data races: every sign row belongs to one channel, so to one task. A live word covers 64 channels, and a channel
// block of run_channel_parallel need not start on a multiple of 64, so two tasks (two threads) can share a live
// word; each ORs its bits in with one atomic read-modify-write (relaxed: the bits of different tasks are disjoint,
// so their order does not matter, and the OpenMP barrier at the end of the parallel region orders every OR before
// the caller reads the words). The zeroing runs on the calling thread before the parallel region starts, which
// OpenMP orders before every worker's first access. (Checked with GCC 12's -fsanitize=thread on this schedule, Dk=200
// over 3 threads: a plain |= is reported as a race between workers, the atomic OR is not.)
void pack_channels_compact(const Plan& plan, std::int64_t b, std::int64_t k_begin, std::int64_t k_count,
                           const float* p) {
  const std::int64_t dt = plan.dt;
  const std::int64_t wpp = words_per_plane(dt);
  std::uint64_t* image = plan.args.out_bits + b * compact_words_per_image(plan.dk, dt);
  std::uint64_t* signs = image + live_words(plan.dk) + k_begin * wpp;
  bool finite = true;
  std::int64_t word = k_begin / kBitsPerWord;
  std::uint64_t live = 0;
  for (std::int64_t k = 0; k < k_count; ++k) {
    const ChannelSigns packed = plan.pack(p + k * dt, dt, nullptr, signs + k * wpp);
    finite &= packed.finite;
    const std::int64_t channel = k_begin + k;
    if (channel / kBitsPerWord != word) {
      if (live) __atomic_fetch_or(image + word, live, __ATOMIC_RELAXED);
      word = channel / kBitsPerWord;
      live = 0;
    }
    live |= static_cast<std::uint64_t>(packed.live) << (channel % kBitsPerWord);
  }
  if (live) __atomic_fetch_or(image + word, live, __ATOMIC_RELAXED);
  if (!finite) plan.not_finite->store(true, std::memory_order_relaxed);
}

// Live words of every image start clear (pack_channels_compact only ORs bits in); padding bits >= Dk stay clear.
void clear_live_words(const Plan& plan) {
  if (plan.args.output != PoolOutput::Compact) return;
  const std::int64_t stride = compact_words_per_image(plan.dk, plan.dt);
  for (std::int64_t b = 0; b < plan.n; ++b)
    std::memset(plan.args.out_bits + b * stride, 0, sizeof(std::uint64_t) * live_words(plan.dk));
}

void finish_channels(const Plan& plan, std::int64_t b, std::int64_t k_begin, std::int64_t k_count, float* p) {
  switch (plan.args.output) {
    case PoolOutput::Float: normalise_channels(plan, k_count, p); break;
    case PoolOutput::Codes: pack_channels(plan, b, k_begin, k_count, p); break;
    case PoolOutput::Compact: pack_channels_compact(plan, b, k_begin, k_count, p); break;
  }
}

void write_channel_mean(const Plan& plan, std::int64_t b) {
  if (!plan.args.channel_mean) return;
  const float* g = plan.args.guidance + b * plan.dk * plan.positions;
  float* out = plan.args.channel_mean + b * plan.dk;
  const double inv = 1.0 / static_cast<double>(plan.positions);
  for (std::int64_t k = 0; k < plan.dk; ++k) {
    double s = 0.0;
    const float* row = g + k * plan.positions;
    for (std::int64_t i = 0; i < plan.positions; ++i) s += row[i];
    out[k] = static_cast<float>(s * inv);
  }
}

float* float_output_for(const Plan& plan, std::int64_t b, std::int64_t k_begin) {
  return plan.args.out_float + (b * plan.dk + k_begin) * plan.dt;
}

void run_image_parallel(const Plan& plan, int threads) {
  const bool to_float = plan.args.output == PoolOutput::Float;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> xp(plan.has_pca ? plan.positions * plan.dt : 0);
    std::vector<float> centred(plan.has_pca ? plan.positions * plan.dt_in : 0);
    std::vector<float> p(to_float ? 0 : plan.dk * plan.dt);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < plan.n; ++b) {
      if (plan.has_pca) project_local(plan, b, centred.data(), xp.data());
      float* dst = to_float ? float_output_for(plan, b, 0) : p.data();
      pool_channels(plan, b, xp.data(), 0, plan.dk, dst);
      finish_channels(plan, b, 0, plan.dk, dst);
      write_channel_mean(plan, b);
    }
  }
}

void run_channel_parallel(const Plan& plan, int threads) {
  const bool to_float = plan.args.output == PoolOutput::Float;
  // Projected local features of the (few) images in this batch.
  std::vector<float> xp(plan.has_pca ? plan.n * plan.positions * plan.dt : 0);
  if (plan.has_pca) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> centred(plan.positions * plan.dt_in);
#pragma omp for schedule(static)
      for (std::int64_t b = 0; b < plan.n; ++b)
        project_local(plan, b, centred.data(), xp.data() + b * plan.positions * plan.dt);
    }
  }
  // Blocks of channels: enough tasks to balance, each still a GEMM of >= 64 rows.
  const std::int64_t blocks_per_image =
      std::max<std::int64_t>(1, std::min<std::int64_t>((plan.dk + 63) / 64, (2 * threads + plan.n - 1) / plan.n));
  const std::int64_t block = (plan.dk + blocks_per_image - 1) / blocks_per_image;
  const std::int64_t tasks = plan.n * blocks_per_image;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> p(to_float ? 0 : block * plan.dt);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t t = 0; t < tasks; ++t) {
      const std::int64_t b = t / blocks_per_image;
      const std::int64_t k_begin = (t % blocks_per_image) * block;
      const std::int64_t k_count = std::min(block, plan.dk - k_begin);
      if (k_count <= 0) continue;
      float* dst = to_float ? float_output_for(plan, b, k_begin) : p.data();
      pool_channels(plan, b, xp.data() + (plan.has_pca ? b * plan.positions * plan.dt : 0), k_begin, k_count, dst);
      finish_channels(plan, b, k_begin, k_count, dst);
      if (k_begin == 0) write_channel_mean(plan, b);
    }
  }
}

bool valid_output(PoolOutput output) {
  return output == PoolOutput::Float || output == PoolOutput::Codes || output == PoolOutput::Compact;
}

}  // namespace

const char* pool_cpu(const PoolArgs& args) {
  const PoolShape& s = args.shape;
  if (s.n < 0 || s.dt_in <= 0 || s.dt <= 0 || s.dk <= 0 || s.positions <= 0) return "pool_cpu: invalid shape";
  if (s.dt_in > INT_MAX || s.dt > INT_MAX || s.dk > INT_MAX || s.positions > INT_MAX)
    return "pool_cpu: a dimension exceeds 2^31 - 1 (the BLAS takes 32-bit sizes)";
  if (!args.local || !args.guidance) {
    if (s.n > 0) return "pool_cpu: null input pointer";
  }
  if (args.input_type != PoolInputType::Float32) return "pool_cpu: inputs must be float32";
  if ((args.pca_mean == nullptr) != (args.pca_proj == nullptr)) return "pool_cpu: pca mean and projection go together";
  if (!args.pca_proj && s.dt != s.dt_in) return "pool_cpu: without PCA, dt must equal dt_in";
  if (!valid_output(args.output)) return "pool_cpu: unknown output kind";
  if (args.output == PoolOutput::Float && !args.out_float && s.n > 0) return "pool_cpu: null float output";
  if (args.output != PoolOutput::Float && !args.out_bits && s.n > 0) return "pool_cpu: null code output";
  if (s.n == 0) return "";

  blas::use_single_threaded_blas();
  std::atomic<bool> not_finite{false};
  const Plan plan{args, s.n, s.dt_in, s.dt, s.dk, s.positions, args.pca_proj != nullptr, &not_finite,
                  sign_pack_kernel()};
  clear_live_words(plan);
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
  if (plan.n >= threads) {
    run_image_parallel(plan, threads);
  } else {
    run_channel_parallel(plan, threads);
  }
  if (not_finite.load()) return kPoolNotFinite;
  return "";
}

const char* pool_finish_cpu(const PoolFinishArgs& args) {
  if (args.n < 0 || args.dk <= 0 || args.dt <= 0) return "pool_finish_cpu: invalid shape";
  if (!valid_output(args.output)) return "pool_finish_cpu: unknown output kind";
  if (args.n == 0) return "";
  if (!args.pooled) return "pool_finish_cpu: null pooled input";
  if (args.output == PoolOutput::Float && !args.out_float) return "pool_finish_cpu: null float output";
  if (args.output != PoolOutput::Float && !args.out_bits) return "pool_finish_cpu: null code output";
  PoolArgs shaped;  // the epilogue's view: only the shape and the outputs are read
  shaped.shape = PoolShape{args.n, args.dt, args.dt, args.dk, 1};
  shaped.output = args.output;
  shaped.out_float = args.out_float;
  shaped.out_bits = args.out_bits;
  std::atomic<bool> not_finite{false};
  const Plan plan{shaped, args.n, args.dt, args.dt, args.dk, 1, false, &not_finite, sign_pack_kernel()};
  clear_live_words(plan);
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
  // blocks of channels: a batch of few images still spreads over every thread
  const std::int64_t block = 64;
  const std::int64_t blocks_per_image = (args.dk + block - 1) / block;
  const std::int64_t tasks = args.n * blocks_per_image;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t b = t / blocks_per_image;
    const std::int64_t k_begin = (t % blocks_per_image) * block;
    const std::int64_t k_count = std::min(block, args.dk - k_begin);
    const std::int64_t offset = (b * args.dk + k_begin) * args.dt;
    switch (args.output) {
      case PoolOutput::Float: {
        float* v = args.out_float + offset;
        if (v != args.pooled + offset) std::memcpy(v, args.pooled + offset, sizeof(float) * k_count * args.dt);
        normalise_channels(plan, k_count, v);
        break;
      }
      case PoolOutput::Codes: pack_channels(plan, b, k_begin, k_count, args.pooled + offset); break;
      case PoolOutput::Compact: pack_channels_compact(plan, b, k_begin, k_count, args.pooled + offset); break;
    }
  }
  if (not_finite.load()) return kPoolNotFinite;
  return "";
}

}  // namespace crosslayer
