// crosslayer/pool.h — fused cross-layer pooling (Liu, Shen, van den Hengel, TPAMI 2017, eq. 2).
//
// Contract (every pointer is C-contiguous, float32 unless stated):
//   local     [n][Dt_in][H*W]   layer t activations, as onnxruntime returns them (N, C, H, W)
//   guidance  [n][Dk][H*W]      layer t+1 activations at the same H, W
//   pca_mean  [Dt_in]           optional (nullptr = no PCA); subtracted from every local feature
//   pca_proj  [Dt_in][Dt]       optional (nullptr = identity, Dt == Dt_in); x' = (x - mean) @ proj
//   For image b and channel k:  P[b][k][:] = sum_i guidance[b][k][i] * x'_i   (x'_i in R^Dt, i over H*W)
//
//   output FLOAT: out_float [n][Dk*Dt], channel-major (channel k occupies [k*Dt, (k+1)*Dt)):
//       each P[b][k] is L2-normalised (an all-zero channel stays all-zero), then every value v -> sign(v)*sqrt(|v|).
//   output CODES: out_bits [n][Dk][2][ceil(Dt/64)] uint64 in the layout of codes.h; sign(P) needs neither the
//       normalisation nor the square root (both preserve sign), and no float representation of the batch exists:
//       each worker holds one image's P (Dk*Dt floats) at a time.
//   output COMPACT: out_bits [n][compact_words_per_image(Dk, Dt)] uint64 in the layout of compact_codes.h, packed
//       from P in the same pass as CODES: live bit k <=> P[b][k] has any nonzero value (NaN counts as nonzero, as
//       in the nonzero plane), sign bit j of channel k <=> P[b][k][j] < 0, an exact zero inside a live channel coded
//       +1 (sign bit clear: the lossy rule of two_plane_to_compact(lossy=True)), padding bits zero. The bits equal
//       two_plane_to_compact(CODES output, Dt, lossy=True) exactly, whatever the number of threads.
//   channel_mean [n][Dk] (optional, nullptr to skip): mean over the H*W positions of guidance[b][k][:].
//
//   n may be 0. H*W >= 1. Threads: `num_threads` <= 0 means the OpenMP default.
#pragma once
#include <cstdint>

namespace crosslayer {

enum class PoolOutput : int { Float = 0, Codes = 1, Compact = 2 };

// Element type of `local` and `guidance`. The CPU kernel takes Float32 only; the CUDA kernel also reads 16-bit
// activations (the pointers then address __nv_bfloat16 / __half values) and computes in TF32 all the same.
// PCA mean/projection and every output stay float32.
enum class PoolInputType : int { Float32 = 0, BFloat16 = 1, Float16 = 2 };

struct PoolShape {
  std::int64_t n = 0;        // images in the batch
  std::int64_t dt_in = 0;    // local-feature channels before PCA
  std::int64_t dt = 0;       // local-feature dimension after PCA (== dt_in without PCA)
  std::int64_t dk = 0;       // guidance channels
  std::int64_t positions = 0;  // H*W
};

struct PoolArgs {
  PoolShape shape;
  const float* local = nullptr;
  const float* guidance = nullptr;
  const float* pca_mean = nullptr;
  const float* pca_proj = nullptr;
  PoolInputType input_type = PoolInputType::Float32;
  PoolOutput output = PoolOutput::Float;
  float* out_float = nullptr;
  std::uint64_t* out_bits = nullptr;
  float* channel_mean = nullptr;
  int num_threads = 0;
};

// Returns an empty string on success, otherwise what was wrong with the arguments, or kPoolNotFinite when a pooled
// value is not finite (|P| > FLT_MAX from finite inputs, or NaN/Inf inputs, which the kernel does not scan for
// itself): the outputs are then unspecified.
inline constexpr const char* kPoolNotFinite =
    "x_t, a_t1: the pooled values are not finite in float32: either |P| overflowed 3.4e38 (scale the inputs down) "
    "or the inputs hold NaN/Inf (check_finite=False skipped their check)";
const char* pool_cpu(const PoolArgs& args);

// The epilogue alone, for P computed elsewhere (a runtime that ran the projection and the pooling in its own graph):
//   pooled [n][Dk][Dt] -> out_float [n][Dk*Dt] (L2 + signed sqrt as above; out_float may be `pooled` itself: in
//   place), out_bits [n][Dk][2][ceil(Dt/64)] (CODES) or out_bits [n][compact_words_per_image(Dk, Dt)] (COMPACT), as
//   pool_cpu finishes its own P. Errors as pool_cpu's, kPoolNotFinite included.
struct PoolFinishArgs {
  std::int64_t n = 0, dk = 0, dt = 0;
  const float* pooled = nullptr;
  PoolOutput output = PoolOutput::Float;
  float* out_float = nullptr;
  std::uint64_t* out_bits = nullptr;
  int num_threads = 0;
};
const char* pool_finish_cpu(const PoolFinishArgs& args);

#ifdef CROSSLAYER_WITH_CUDA
// Same contract with device pointers, enqueued on `stream` (a cudaStream_t); nothing is synchronised. Outputs FLOAT
// and CODES only: COMPACT is refused (an error message). Products run
// on the tensor cores in TF32 (10-bit mantissa operands, float32 accumulation), so float outputs and code bits of
// values within TF32 rounding of zero may differ from pool_cpu. `num_threads` is ignored. Overflow is not
// reported (that would need a host synchronisation): outputs are then unspecified, as with non-finite inputs.
const char* pool_cuda(const PoolArgs& args, void* stream);
#endif

}  // namespace crosslayer
