// Fused cross-layer pooling on the GPU. See crosslayer/pool.h for the contract.
//
// Per chunk of images:
//   with PCA:  xp = (X^T - mean) W for all images of the chunk at once   [images*positions x Dt]  (tf32_gemm.cuh,
//              images folded into M so a 196-row image wastes no tile)
//   always:    P[b] = G_b xp[b]  (or G_b X_b^T without PCA)              [Dk x Dt] per image, whose epilogue
//              - codes: packs sign bits straight from the accumulators (a warp row is one 64-bit word), so no
//                float P ever reaches global memory;
//              - float: writes P and adds each channel's sum of squares (atomics across column tiles); a light
//                second pass applies the L2 scale and the signed square root in place.
// channel_mean is one warp per (image, channel), summed in double like the CPU kernel. bfloat16/float16 inputs are
// widened to float32 scratch first and then take the same path (same TF32 rounding of the operands).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "crosslayer/codes.h"
#include "crosslayer/pool.h"
#include "cuda_util.cuh"
#include "tf32_gemm.cuh"

namespace crosslayer {
namespace {

using cuda_detail::ceil_div;
using tf32::Epilogue;
using tf32::GemmParams;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void widen_kernel(const T* in, float* out, std::int64_t count) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = to_float(in[i]);
}

// In place: v -> sign(u) sqrt(|u|), u = v / ||P[b][k]|| (an all-zero channel stays zero), as pool_cpu does.
__global__ void normalize_signed_sqrt_kernel(float* values, const float* sum_squares, std::int64_t rows,
                                             std::int64_t dt) {
  const std::int64_t total = rows * dt;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float sq = sum_squares[idx / dt];
    if (sq == 0.0f) continue;
    const float inv = static_cast<float>(1.0 / sqrt(static_cast<double>(sq)));
    const float u = values[idx] * inv;
    values[idx] = copysignf(sqrtf(fabsf(u)), u);
  }
}

template <typename T>
__global__ void channel_mean_kernel(const T* guidance, std::int64_t rows, std::int64_t positions, float* out) {
  const std::int64_t warps_per_block = blockDim.x / 32;
  const std::int64_t row = blockIdx.x * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* src = guidance + row * positions;
  double sum = 0.0;
  for (std::int64_t i = lane; i < positions; i += 32) sum += static_cast<double>(to_float(src[i]));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) out[row] = static_cast<float>(sum / static_cast<double>(positions));
}

template <bool A_KMAJOR, bool B_NMAJOR, bool VEC, bool B_IS_TF32, Epilogue EPILOGUE, int MT>
cudaError_t launch_gemm_as(const GemmParams& p, std::int64_t images, cudaStream_t stream) {
  auto kernel = tf32::gemm_kernel<A_KMAJOR, B_NMAJOR, VEC, B_IS_TF32, EPILOGUE, MT>;
  constexpr std::size_t kShared = tf32::shared_bytes<A_KMAJOR, B_NMAJOR, MT>();
  // Dynamic shared memory above 48 KiB must be opted into per kernel (and device: so on every call; it is cheap).
  const cudaError_t opt_in =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kShared));
  if (opt_in != cudaSuccess) return opt_in;
  const std::int64_t tiles_m = ceil_div(p.M, tf32::block_m<MT>());
  if (tiles_m > 65535 || images > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, tf32::kBN)), static_cast<unsigned>(tiles_m),
                  static_cast<unsigned>(images));
  kernel<<<grid, tf32::kThreads, kShared, stream>>>(p);
  return cudaGetLastError();
}

// The 128 x 128 CTA tile (MT = 2): on an H200 it ran the n=128, 14x14, 512x512 pooling 8-10% faster than the
// 256 x 128 tile (MT = 4), which halves shared-memory and L2 traffic per mma but fits one CTA per SM.
constexpr int kWarpMTiles = 2;

template <bool A_KMAJOR, bool B_NMAJOR, bool B_IS_TF32, Epilogue EPILOGUE>
cudaError_t launch_gemm(const GemmParams& p, std::int64_t images, bool vectorized, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0 || images == 0) return cudaSuccess;
  return vectorized ? launch_gemm_as<A_KMAJOR, B_NMAJOR, true, B_IS_TF32, EPILOGUE, kWarpMTiles>(p, images, stream)
                    : launch_gemm_as<A_KMAJOR, B_NMAJOR, false, B_IS_TF32, EPILOGUE, kWarpMTiles>(p, images, stream);
}

__global__ void round_to_tf32_kernel(const float* in, float* out, std::int64_t count) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = tf32::tf32_value(in[i]);
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// P = G X'^T for `images` images with the given epilogue; B is xp [positions][dt] or the raw X [dt][positions].
template <Epilogue EPILOGUE>
cudaError_t launch_pooling(const PoolShape& s, const float* guidance, const float* xp, const float* local,
                           GemmParams p, std::int64_t images, bool vectorized, cudaStream_t stream) {
  p.M = static_cast<int>(s.dk);
  p.N = static_cast<int>(s.dt);
  p.K = static_cast<int>(s.positions);
  p.a = guidance;
  p.a_batch = s.dk * s.positions;
  p.lda = s.positions;
  p.a_k_offset = nullptr;
  if (xp) {
    p.b = xp;
    p.b_batch = s.positions * s.dt;
    p.ldb = s.dt;
    return launch_gemm<true, true, true, EPILOGUE>(p, images, vectorized, stream);  // xp is stored as TF32
  }
  p.b = local;
  p.b_batch = s.dt_in * s.positions;
  p.ldb = s.positions;
  return launch_gemm<true, false, false, EPILOGUE>(p, images, vectorized, stream);
}

const char* pool_float32(const PoolArgs& args, const float* local, const float* guidance, cudaStream_t stream) {
  const PoolShape& s = args.shape;
  const bool has_pca = args.pca_proj != nullptr;
  const bool to_float = args.output == PoolOutput::Float;
  // 16-byte copies need every leading dimension (positions, dt) to be a multiple of 4 floats and 16-byte bases.
  const bool vectorized = s.positions % 4 == 0 && s.dt % 4 == 0 && aligned16(local) && aligned16(guidance);

  if (args.channel_mean) {
    const std::int64_t rows = s.n * s.dk;
    constexpr int kMeanThreads = 256;
    const std::int64_t blocks = ceil_div(rows, kMeanThreads / 32);
    if (blocks > INT_MAX) return "pool_cuda: batch too large";
    channel_mean_kernel<float><<<static_cast<unsigned>(blocks), kMeanThreads, 0, stream>>>(guidance, rows, s.positions,
                                                                                          args.channel_mean);
    CROSSLAYER_CUDA_TRY(cudaGetLastError());
  }

  CROSSLAYER_CUDA_TRY(cuda_detail::keep_pool_memory_cached());
  // The projected features of a chunk of images live in scratch; chunks bound it to ~256 MiB, and keep the folded
  // M of the PCA GEMM and the grid's z extent within their limits.
  const std::int64_t xp_floats_per_image = has_pca ? s.positions * s.dt : 0;
  std::int64_t chunk = std::min<std::int64_t>(s.n, 65535);
  if (has_pca) {
    chunk = std::min<std::int64_t>(chunk, std::max<std::int64_t>(1, (std::int64_t(64) << 20) / xp_floats_per_image));
    chunk = std::min<std::int64_t>(chunk, std::max<std::int64_t>(1, (std::int64_t(65535) * 128) / s.positions));
  }
  cuda_detail::StreamScratch xp_scratch(stream), norm_scratch(stream), proj_scratch(stream);
  if (has_pca) {
    CROSSLAYER_CUDA_TRY(xp_scratch.allocate(sizeof(float) * chunk * xp_floats_per_image));
    // The projection is read by every tile of the PCA GEMM: round it to TF32 once.
    const std::int64_t count = s.dt_in * s.dt;
    CROSSLAYER_CUDA_TRY(proj_scratch.allocate(sizeof(float) * count));
    const std::int64_t blocks = std::min<std::int64_t>(ceil_div(count, 256), 4096);
    round_to_tf32_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(args.pca_proj, proj_scratch.as<float>(),
                                                                            count);
    CROSSLAYER_CUDA_TRY(cudaGetLastError());
  }
  if (to_float) {
    CROSSLAYER_CUDA_TRY(norm_scratch.allocate(sizeof(float) * s.n * s.dk));
    CROSSLAYER_CUDA_TRY(cudaMemsetAsync(norm_scratch.as<float>(), 0, sizeof(float) * s.n * s.dk, stream));
  }

  for (std::int64_t first = 0; first < s.n; first += chunk) {
    const std::int64_t images = std::min(chunk, s.n - first);
    const float* local_chunk = local + first * s.dt_in * s.positions;
    const float* guidance_chunk = guidance + first * s.dk * s.positions;
    float* xp = nullptr;
    if (has_pca) {
      xp = xp_scratch.as<float>();
      // xp (images*positions x dt) = (X^T - mean) W: A(m, k) = X_{m / positions}[k][m % positions] - mean[k].
      GemmParams p{};
      p.M = static_cast<int>(images * s.positions);
      p.N = static_cast<int>(s.dt);
      p.K = static_cast<int>(s.dt_in);
      p.a = local_chunk;
      p.a_batch = s.dt_in * s.positions;
      p.lda = s.positions;
      p.a_rows_per_image = static_cast<int>(s.positions);
      p.a_k_offset = args.pca_mean;
      p.b = proj_scratch.as<float>();
      p.b_batch = 0;
      p.ldb = s.dt;
      p.c = xp;
      p.c_batch = 0;
      p.ldc = s.dt;
      CROSSLAYER_CUDA_TRY((launch_gemm<false, true, true, Epilogue::StoreTf32>(p, 1, vectorized, stream)));
    }
    GemmParams p{};
    if (to_float) {
      p.c = args.out_float + first * s.dk * s.dt;
      p.c_batch = s.dk * s.dt;
      p.ldc = s.dt;
      p.sum_squares = norm_scratch.as<float>() + first * s.dk;
      CROSSLAYER_CUDA_TRY((launch_pooling<Epilogue::SumSquares>(s, guidance_chunk, xp, local_chunk, p, images,
                                                               vectorized, stream)));
    } else {
      p.bits = args.out_bits + first * words_per_image(s.dk, s.dt);
      p.words = words_per_plane(s.dt);
      CROSSLAYER_CUDA_TRY((launch_pooling<Epilogue::PackSigns>(s, guidance_chunk, xp, local_chunk, p, images,
                                                              vectorized, stream)));
    }
  }

  if (to_float) {
    const std::int64_t total = s.n * s.dk * s.dt;
    const std::int64_t blocks = std::min<std::int64_t>(ceil_div(total, 256), 65536);
    normalize_signed_sqrt_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        args.out_float, norm_scratch.as<float>(), s.n * s.dk, s.dt);
    CROSSLAYER_CUDA_TRY(cudaGetLastError());
  }
  return "";
}

template <typename T>
const char* pool_widened(const PoolArgs& args, cudaStream_t stream) {
  const PoolShape& s = args.shape;
  const std::int64_t local_count = s.n * s.dt_in * s.positions, guidance_count = s.n * s.dk * s.positions;
  cuda_detail::StreamScratch wide(stream);
  CROSSLAYER_CUDA_TRY(wide.allocate(sizeof(float) * (local_count + guidance_count + 4)));
  float* local = wide.as<float>();
  float* guidance = local + ((local_count + 3) / 4) * 4;  // keep 16-byte alignment
  auto widen = [stream](const void* in, float* out, std::int64_t count) {
    const std::int64_t blocks = std::min<std::int64_t>(std::max<std::int64_t>(ceil_div(count, 256), 1), 65536);
    widen_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(static_cast<const T*>(in), out, count);
    return cudaGetLastError();
  };
  CROSSLAYER_CUDA_TRY(widen(args.local, local, local_count));
  CROSSLAYER_CUDA_TRY(widen(args.guidance, guidance, guidance_count));
  return pool_float32(args, local, guidance, stream);
}

}  // namespace

const char* pool_cuda(const PoolArgs& args, void* stream_handle) {
  const PoolShape& s = args.shape;
  if (s.n < 0 || s.dt_in <= 0 || s.dt <= 0 || s.dk <= 0 || s.positions <= 0) return "pool_cuda: invalid shape";
  // Per-image GEMM extents are int; element offsets are 64-bit.
  if (s.dt_in > INT_MAX || s.dt > INT_MAX || s.dk > INT_MAX || s.positions > INT_MAX)
    return "pool_cuda: a dimension exceeds 2^31 - 1";
  if ((!args.local || !args.guidance) && s.n > 0) return "pool_cuda: null input pointer";
  if ((args.pca_mean == nullptr) != (args.pca_proj == nullptr)) return "pool_cuda: pca mean and projection go together";
  if (!args.pca_proj && s.dt != s.dt_in) return "pool_cuda: without PCA, dt must equal dt_in";
  if (args.output == PoolOutput::Float && !args.out_float && s.n > 0) return "pool_cuda: null float output";
  if (args.output == PoolOutput::Codes && !args.out_bits && s.n > 0) return "pool_cuda: null code output";
  if (args.output == PoolOutput::Compact) return "pool_cuda: no compact output (pool 2-plane codes, convert them)";
  if (s.n == 0) return "";
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  switch (args.input_type) {
    case PoolInputType::Float32:
      return pool_float32(args, reinterpret_cast<const float*>(args.local),
                          reinterpret_cast<const float*>(args.guidance), stream);
    case PoolInputType::BFloat16:
      return pool_widened<__nv_bfloat16>(args, stream);
    case PoolInputType::Float16:
      return pool_widened<__half>(args, stream);
  }
  return "pool_cuda: unknown input type";
}

}  // namespace crosslayer
