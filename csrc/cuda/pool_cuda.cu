// Fused cross-layer pooling on the GPU. See crosslayer/pool.h for the contract.
//
// Per chunk of images:
//   with PCA:  xp[b] = (X_b^T - mean) W          [positions x Dt]  tensor-core GEMM into a scratch buffer
//   always:    P[b]  = G_b xp[b]  (or G_b X_b^T)  [Dk x Dt]         tensor-core GEMM whose epilogue
//              - codes: packs sign bits straight from the accumulators (one 64-column word per warp row, built
//                with warp ballots), so no float P ever reaches global memory;
//              - float: writes P and adds each channel's sum of squares (atomics across column tiles); a light
//                second pass applies the L2 scale and the signed square root in place.
// channel_mean is one warp per (image, channel), summed in double like the CPU kernel.
//
// GEMM tiling: 128x128 CTA tile, K step 16, 8 warps of 32x64 (2x4 WMMA m16n16k8 TF32 fragments), operands staged
// global -> registers -> shared memory (converted to TF32 there) so the next K step's loads overlap the MMAs.
// The global->shared mapping follows whichever operand axis is contiguous, so every operand is read coalesced
// without a transposed copy. Shared rows are padded by 4 floats: WMMA needs 32-byte aligned fragment pointers and
// ldm a multiple of 4 floats, and the padding breaks bank conflicts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "crosslayer/codes.h"
#include "crosslayer/pool.h"
#include "cuda_util.cuh"

namespace crosslayer {
namespace {

using namespace nvcuda;
using cuda_detail::ceil_div;

constexpr int kTileM = 128;
constexpr int kTileN = 128;
constexpr int kTileK = 16;
constexpr int kThreads = 256;
constexpr int kWarpM = 32;  // rows per warp
constexpr int kWarpN = 64;  // columns per warp: exactly one code word per row
constexpr int kPadA = kTileK + 4;
constexpr int kPadB = kTileN + 4;
constexpr int kStagePitch = kWarpN + 4;
constexpr int kOperandFloats = kTileM * kPadA + kTileK * kPadB;
constexpr int kStageFloats = (kThreads / 32) * 16 * kStagePitch;
constexpr int kSharedFloats = kOperandFloats > kStageFloats ? kOperandFloats : kStageFloats;
static_assert(kTileN % kBitsPerWord == 0 && kWarpN == kBitsPerWord, "a warp row must cover whole code words");
static_assert((kTileM / kWarpM) * (kTileN / kWarpN) == kThreads / 32, "warp grid must cover the CTA tile");

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

enum class Epilogue : int { StoreFloat, SumSquares, PackSigns };

// One operand of C[b] = A[b] B[b]: element (r, c) of batch b is at base[b*batch + r*row_stride + c*col_stride].
template <typename T>
struct Operand {
  const T* base;
  std::int64_t batch;
  std::int64_t row_stride;
  std::int64_t col_stride;
  int rows;
  int cols;
  const float* col_offset;  // optional: subtracted from every valid element of column c (PCA centring)
};

struct Output {
  float* values;                // StoreFloat / SumSquares: [b][M][N] row-major
  float* sum_squares;           // SumSquares: [b][M], accumulated
  std::uint64_t* bits;          // PackSigns: [b][M][2][words]
  std::int64_t words;
};

// Loads a ROWS x COLS tile starting at (row0, col0) into registers. COL_CONTIG: consecutive threads take
// consecutive columns (col_stride == 1), otherwise consecutive rows (row_stride == 1). Out-of-range reads as 0.
template <int ROWS, int COLS, bool COL_CONTIG, typename T>
struct TileLoader {
  static constexpr int kPerThread = ROWS * COLS / kThreads;
  static_assert(ROWS * COLS % kThreads == 0, "tile must divide among the threads");
  float regs[kPerThread];

  __device__ __forceinline__ static void coords(int i, int& r, int& c) {
    const int t = threadIdx.x;
    if (COL_CONTIG) {
      c = t % COLS;
      r = t / COLS + i * (kThreads / COLS);
    } else {
      r = t % ROWS;
      c = t / ROWS + i * (kThreads / ROWS);
    }
  }

  __device__ __forceinline__ void load(const Operand<T>& op, const T* batch_base, int row0, int col0) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      int r, c;
      coords(i, r, c);
      const int gr = row0 + r, gc = col0 + c;
      float v = 0.0f;
      if (gr < op.rows && gc < op.cols) {
        v = to_float(batch_base[gr * op.row_stride + gc * op.col_stride]);
        if (op.col_offset) v -= __ldg(op.col_offset + gc);
      }
      regs[i] = v;
    }
  }

  __device__ __forceinline__ void store(float* tile, int pitch) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      int r, c;
      coords(i, r, c);
      tile[r * pitch + c] = wmma::__float_to_tf32(regs[i]);
    }
  }
};

template <typename TA, bool A_COL_CONTIG, typename TB, bool B_COL_CONTIG, Epilogue EPILOGUE>
__global__ void __launch_bounds__(kThreads) tf32_gemm_kernel(Operand<TA> a, Operand<TB> b, Output out, int tiles_m,
                                                             int tiles_n) {
  __shared__ __align__(128) float shared[kSharedFloats];
  float* a_tile = shared;                      // [kTileM][kPadA]
  float* b_tile = shared + kTileM * kPadA;     // [kTileK][kPadB]

  const int M = a.rows, N = b.cols, K = a.cols;
  const std::int64_t block = blockIdx.x;
  const int tile_n = static_cast<int>(block % tiles_n);
  const int tile_m = static_cast<int>((block / tiles_n) % tiles_m);
  const std::int64_t image = block / (static_cast<std::int64_t>(tiles_n) * tiles_m);
  const int m0 = tile_m * kTileM, n0 = tile_n * kTileN;
  const TA* a_base = a.base + image * a.batch;
  const TB* b_base = b.base + image * b.batch;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp / (kTileN / kWarpN), warp_n = warp % (kTileN / kWarpN);

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  TileLoader<kTileM, kTileK, A_COL_CONTIG, TA> a_loader;
  TileLoader<kTileK, kTileN, B_COL_CONTIG, TB> b_loader;
  const int k_tiles = (K + kTileK - 1) / kTileK;
  a_loader.load(a, a_base, m0, 0);
  b_loader.load(b, b_base, 0, n0);
  for (int kt = 0; kt < k_tiles; ++kt) {
    a_loader.store(a_tile, kPadA);
    b_loader.store(b_tile, kPadB);
    __syncthreads();
    if (kt + 1 < k_tiles) {  // next tile's global loads are in flight during this tile's MMAs
      a_loader.load(a, a_base, m0, (kt + 1) * kTileK);
      b_loader.load(b, b_base, (kt + 1) * kTileK, n0);
    }
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b_frag[4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(a_frag[i], a_tile + (warp_m * kWarpM + i * 16) * kPadA + kk, kPadA);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        wmma::load_matrix_sync(b_frag[j], b_tile + kk * kPadB + warp_n * kWarpN + j * 16, kPadB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
    __syncthreads();  // operand tiles are rewritten (or reused as the epilogue stage) next
  }

  // Epilogue: each warp stages 16 rows x 64 columns at a time; lane l holds columns l and l + 32 of a row.
  float* stage = shared + warp * 16 * kStagePitch;
  const int col_base = n0 + warp_n * kWarpN;
  if (col_base >= N) return;  // this warp's columns are all padding (no barrier follows)
  const int col0 = col_base + lane, col1 = col_base + 32 + lane;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      wmma::store_matrix_sync(stage + j * 16, acc[i][j], kStagePitch, wmma::mem_row_major);
    __syncwarp();
    for (int rr = 0; rr < 16; ++rr) {
      const int row = m0 + warp_m * kWarpM + i * 16 + rr;
      if (row >= M) break;  // uniform across the warp
      const float v0 = col0 < N ? stage[rr * kStagePitch + lane] : 0.0f;
      const float v1 = col1 < N ? stage[rr * kStagePitch + 32 + lane] : 0.0f;
      if (EPILOGUE == Epilogue::PackSigns) {
        const std::uint64_t nz = static_cast<std::uint64_t>(__ballot_sync(0xffffffffu, v0 != 0.0f)) |
                                 (static_cast<std::uint64_t>(__ballot_sync(0xffffffffu, v1 != 0.0f)) << 32);
        const std::uint64_t neg = static_cast<std::uint64_t>(__ballot_sync(0xffffffffu, v0 < 0.0f)) |
                                  (static_cast<std::uint64_t>(__ballot_sync(0xffffffffu, v1 < 0.0f)) << 32);
        if (lane == 0) {
          std::uint64_t* channel = out.bits + (image * M + row) * (kPlanes * out.words);
          const int word = col_base / kBitsPerWord;
          channel[word] = nz;
          channel[out.words + word] = neg;
        }
      } else {
        float* dst = out.values + (image * M + row) * static_cast<std::int64_t>(N);
        if (col0 < N) dst[col0] = v0;
        if (col1 < N) dst[col1] = v1;
        if (EPILOGUE == Epilogue::SumSquares) {
          float sq = v0 * v0 + v1 * v1;
#pragma unroll
          for (int offset = 16; offset > 0; offset >>= 1) sq += __shfl_down_sync(0xffffffffu, sq, offset);
          if (lane == 0) atomicAdd(out.sum_squares + image * M + row, sq);
        }
      }
    }
    __syncwarp();
  }
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

template <typename TA, bool A_COL_CONTIG, typename TB, bool B_COL_CONTIG, Epilogue EPILOGUE>
cudaError_t launch_gemm(const Operand<TA>& a, const Operand<TB>& b, const Output& out, std::int64_t images,
                        cudaStream_t stream) {
  const std::int64_t tiles_m = ceil_div(a.rows, kTileM), tiles_n = ceil_div(b.cols, kTileN);
  const std::int64_t blocks = tiles_m * tiles_n * images;
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  tf32_gemm_kernel<TA, A_COL_CONTIG, TB, B_COL_CONTIG, EPILOGUE><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      a, b, out, static_cast<int>(tiles_m), static_cast<int>(tiles_n));
  return cudaGetLastError();
}

// P = G X'^T for `images` images; the B operand is either the projected features xp [positions][dt] (row-major)
// or the raw local features [dt][positions] read transposed.
template <typename T, Epilogue EPILOGUE>
cudaError_t launch_pooling(const PoolShape& s, const T* guidance, const float* xp, const T* local, const Output& out,
                           std::int64_t images, cudaStream_t stream) {
  const int positions = static_cast<int>(s.positions), dk = static_cast<int>(s.dk), dt = static_cast<int>(s.dt);
  const Operand<T> a{guidance, s.dk * s.positions, s.positions, 1, dk, positions, nullptr};
  if (xp) {
    const Operand<float> b{xp, s.positions * s.dt, s.dt, 1, positions, dt, nullptr};
    return launch_gemm<T, true, float, true, EPILOGUE>(a, b, out, images, stream);
  }
  const Operand<T> b{local, s.dt_in * s.positions, 1, s.positions, positions, dt, nullptr};
  return launch_gemm<T, true, T, false, EPILOGUE>(a, b, out, images, stream);
}

template <typename T>
const char* pool_typed(const PoolArgs& args, cudaStream_t stream) {
  const PoolShape& s = args.shape;
  const T* local = reinterpret_cast<const T*>(args.local);
  const T* guidance = reinterpret_cast<const T*>(args.guidance);
  const bool has_pca = args.pca_proj != nullptr;
  const bool to_float = args.output == PoolOutput::Float;

  if (args.channel_mean) {
    const std::int64_t rows = s.n * s.dk;
    constexpr int kMeanThreads = 256;
    const std::int64_t blocks = ceil_div(rows, kMeanThreads / 32);
    if (blocks > INT_MAX) return "pool_cuda: batch too large";
    channel_mean_kernel<T><<<static_cast<unsigned>(blocks), kMeanThreads, 0, stream>>>(guidance, rows, s.positions,
                                                                                      args.channel_mean);
    CROSSLAYER_CUDA_TRY(cudaGetLastError());
  }

  CROSSLAYER_CUDA_TRY(cuda_detail::keep_pool_memory_cached());
  // The projected features of a chunk of images live in scratch; chunks bound it to ~256 MiB.
  const std::int64_t xp_floats_per_image = has_pca ? s.positions * s.dt : 0;
  const std::int64_t chunk =
      has_pca ? std::max<std::int64_t>(1, std::min<std::int64_t>(s.n, (std::int64_t(64) << 20) / xp_floats_per_image))
              : s.n;
  cuda_detail::StreamScratch xp_scratch(stream), norm_scratch(stream);
  if (has_pca) CROSSLAYER_CUDA_TRY(xp_scratch.allocate(sizeof(float) * chunk * xp_floats_per_image));
  if (to_float) {
    CROSSLAYER_CUDA_TRY(norm_scratch.allocate(sizeof(float) * s.n * s.dk));
    CROSSLAYER_CUDA_TRY(cudaMemsetAsync(norm_scratch.as<float>(), 0, sizeof(float) * s.n * s.dk, stream));
  }

  for (std::int64_t first = 0; first < s.n; first += chunk) {
    const std::int64_t images = std::min(chunk, s.n - first);
    const T* local_chunk = local + first * s.dt_in * s.positions;
    const T* guidance_chunk = guidance + first * s.dk * s.positions;
    float* xp = nullptr;
    if (has_pca) {
      xp = xp_scratch.as<float>();
      // xp[b] (positions x dt) = (X_b^T - mean) W: A(m=position, k=channel) = X_b[channel][position] - mean[channel].
      const Operand<T> a{local_chunk, s.dt_in * s.positions, 1, s.positions, static_cast<int>(s.positions),
                         static_cast<int>(s.dt_in), args.pca_mean};
      const Operand<float> b{args.pca_proj, 0, s.dt, 1, static_cast<int>(s.dt_in), static_cast<int>(s.dt), nullptr};
      const Output out{xp, nullptr, nullptr, 0};
      CROSSLAYER_CUDA_TRY((launch_gemm<T, false, float, true, Epilogue::StoreFloat>(a, b, out, images, stream)));
    }
    if (to_float) {
      const Output out{args.out_float + first * s.dk * s.dt, norm_scratch.as<float>() + first * s.dk, nullptr, 0};
      CROSSLAYER_CUDA_TRY((launch_pooling<T, Epilogue::SumSquares>(s, guidance_chunk, xp, local_chunk, out, images,
                                                                  stream)));
    } else {
      const Output out{nullptr, nullptr, args.out_bits + first * words_per_image(s.dk, s.dt), words_per_plane(s.dt)};
      CROSSLAYER_CUDA_TRY((launch_pooling<T, Epilogue::PackSigns>(s, guidance_chunk, xp, local_chunk, out, images,
                                                                 stream)));
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
  if (s.n == 0) return "";
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  switch (args.input_type) {
    case PoolInputType::Float32:
      return pool_typed<float>(args, stream);
    case PoolInputType::BFloat16:
      return pool_typed<__nv_bfloat16>(args, stream);
    case PoolInputType::Float16:
      return pool_typed<__half>(args, stream);
  }
  return "pool_cuda: unknown input type";
}

}  // namespace crosslayer
