// Batched TF32 tensor-core GEMM with fused epilogues, for the cross-layer pooling kernels (pool_cuda.cu).
//
//   C[z] (M x N) = A[z] (M x K) * B[z] (K x N),  z = image; float32 in memory, TF32 (round-to-nearest) on the
//   tensor cores (mma.sync m16n8k8), float32 accumulation.
//
// Operand layouts (all addressing is 64-bit):
//   A, K-major ("row-major"):      A(m, k) = a[z * a_batch + m * lda + k]                      (guidance G)
//   A, M-major, image-flattened:   A(m, k) = a[(m / a_rows_per_image) * a_batch + k * lda + m % a_rows_per_image]
//                                  (launched with one z: the images are folded into M)
//                                  (the PCA GEMM: rows are the positions of all images of the chunk, so X^T of every
//                                   image is one tall operand and no tile is wasted on a 196-row image)
//   B, N-major ("row-major"):      B(k, n) = b[z * b_batch + k * ldb + n]                      (W, or xp)
//   B, K-major:                    B(k, n) = b[z * b_batch + n * ldb + k]                      (raw X without PCA)
//   An optional per-k `a_k_offset` is subtracted from A (PCA centring) as fragments are read from shared memory,
//   so the subtraction happens in float32 before the TF32 rounding, like the CPU kernel's centring.
//
// Tiling: 128 x 128 CTA tile, K step 32, 8 warps as 4 (M) x 2 (N), warp tile 32 x 64 (2 x 8 mma tiles), so one
// warp row spans exactly one 64-bit code word. Operands go global -> shared through a 3-stage cp.async pipeline
// (16-byte copies when every leading dimension is a multiple of 4 floats and bases are 16-byte aligned, 4-byte
// copies otherwise; out-of-range elements are zero-filled, so tails need no special casing and padding columns of
// a code word pool to exactly 0). Shared pitches are chosen so fragment reads are bank-conflict free
// (pitch = 4 mod 32 for K-contiguous tiles, 8 mod 32 for M/N-contiguous ones) and rows stay 16-byte aligned.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "crosslayer/codes.h"

namespace crosslayer::tf32 {

constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 3, kThreads = 256;
constexpr int kPitchKContig = kBK + 4;   // [rows][k] tiles
constexpr int kPitchRowContig = kBM + 8;  // [k][rows] tiles (kBM == kBN)
constexpr int kTileFloats = (kBM * kPitchKContig > kBK * kPitchRowContig) ? kBM * kPitchKContig : kBK * kPitchRowContig;
constexpr int kStageFloats = 2 * kTileFloats;
constexpr std::size_t kSharedBytes = sizeof(float) * kStageFloats * kStages;
static_assert(kBM == kBN, "one pitch serves both row-contiguous tiles");
static_assert(kBN / 2 == kBitsPerWord, "a warp's 64 columns must be exactly one code word");

enum class Epilogue : int { StoreFloat, SumSquares, PackSigns };

struct GemmParams {
  int M, N, K;
  const float* a;
  std::int64_t a_batch, lda;
  int a_rows_per_image;      // M-major A only
  const float* a_k_offset;   // nullable: subtracted from A(m, k) for k < K
  const float* b;
  std::int64_t b_batch, ldb;
  // epilogue targets
  float* c;                  // StoreFloat / SumSquares: C(z, m, n) = c[z * c_batch + m * ldc + n]
  std::int64_t c_batch, ldc;
  float* sum_squares;        // SumSquares: [z * M + m] += sum_n C^2
  std::uint64_t* bits;       // PackSigns: channel (z, m) at bits[(z * M + m) * 2 * words]
  std::int64_t words;
};

__device__ __forceinline__ std::uint32_t to_tf32(float v) {
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Global address of A(m, k) / B(k, n) for image z; callers guarantee m < M, k < K, n < N.
template <bool A_KMAJOR>
__device__ __forceinline__ const float* a_address(const GemmParams& p, std::int64_t z, int m, int k) {
  if (A_KMAJOR) return p.a + z * p.a_batch + static_cast<std::int64_t>(m) * p.lda + k;
  const int image = m / p.a_rows_per_image, row = m - image * p.a_rows_per_image;
  return p.a + static_cast<std::int64_t>(image) * p.a_batch + static_cast<std::int64_t>(k) * p.lda + row;
}

template <bool B_NMAJOR>
__device__ __forceinline__ const float* b_address(const GemmParams& p, std::int64_t z, int k, int n) {
  if (B_NMAJOR) return p.b + z * p.b_batch + static_cast<std::int64_t>(k) * p.ldb + n;
  return p.b + z * p.b_batch + static_cast<std::int64_t>(n) * p.ldb + k;
}

// Copies one K step of A (kBM x kBK) and B (kBK x kBN) into a pipeline stage.
template <bool A_KMAJOR, bool B_NMAJOR, bool VEC>
__device__ __forceinline__ void load_stage(const GemmParams& p, std::int64_t z, int m0, int n0, int k0, float* a_s,
                                           float* b_s) {
  const int tid = threadIdx.x;
  constexpr int kWidth = VEC ? 4 : 1;
  // A
  if (A_KMAJOR) {  // [m][k]: kBK / kWidth copies per row
    constexpr int kPerRow = kBK / kWidth, kTotal = kBM * kPerRow;
    static_assert(kTotal % kThreads == 0, "copies must divide among the threads");
#pragma unroll(VEC ? 4 : 2)  // the 4-byte fallback has 16 copies per thread: full unrolling would spill
    for (int step = 0; step < kTotal / kThreads; ++step) {
      const int i = tid + step * kThreads;
      const int r = i / kPerRow, kc = (i % kPerRow) * kWidth;
      const int m = m0 + r, k = k0 + kc;
      const bool valid = m < p.M && k < p.K;
      const float* src = valid ? a_address<true>(p, z, m, k) : p.a;
      float* dst = a_s + r * kPitchKContig + kc;
      if (VEC) cp_async16(dst, src, valid); else cp_async4(dst, src, valid);
    }
  } else {  // [k][m]
    constexpr int kPerRow = kBM / kWidth, kTotal = kBK * kPerRow;
    static_assert(kTotal % kThreads == 0, "copies must divide among the threads");
#pragma unroll(VEC ? 4 : 2)  // the 4-byte fallback has 16 copies per thread: full unrolling would spill
    for (int step = 0; step < kTotal / kThreads; ++step) {
      const int i = tid + step * kThreads;
      const int kr = i / kPerRow, mc = (i % kPerRow) * kWidth;
      const int m = m0 + mc, k = k0 + kr;
      const bool valid = m < p.M && k < p.K;
      const float* src = valid ? a_address<false>(p, z, m, k) : p.a;
      float* dst = a_s + kr * kPitchRowContig + mc;
      if (VEC) cp_async16(dst, src, valid); else cp_async4(dst, src, valid);
    }
  }
  // B
  if (B_NMAJOR) {  // [k][n]
    constexpr int kPerRow = kBN / kWidth, kTotal = kBK * kPerRow;
    static_assert(kTotal % kThreads == 0, "copies must divide among the threads");
#pragma unroll(VEC ? 4 : 2)  // the 4-byte fallback has 16 copies per thread: full unrolling would spill
    for (int step = 0; step < kTotal / kThreads; ++step) {
      const int i = tid + step * kThreads;
      const int kr = i / kPerRow, nc = (i % kPerRow) * kWidth;
      const int n = n0 + nc, k = k0 + kr;
      const bool valid = n < p.N && k < p.K;
      const float* src = valid ? b_address<true>(p, z, k, n) : p.b;
      float* dst = b_s + kr * kPitchRowContig + nc;
      if (VEC) cp_async16(dst, src, valid); else cp_async4(dst, src, valid);
    }
  } else {  // [n][k]
    constexpr int kPerRow = kBK / kWidth, kTotal = kBN * kPerRow;
    static_assert(kTotal % kThreads == 0, "copies must divide among the threads");
#pragma unroll(VEC ? 4 : 2)  // the 4-byte fallback has 16 copies per thread: full unrolling would spill
    for (int step = 0; step < kTotal / kThreads; ++step) {
      const int i = tid + step * kThreads;
      const int r = i / kPerRow, kc = (i % kPerRow) * kWidth;
      const int n = n0 + r, k = k0 + kc;
      const bool valid = n < p.N && k < p.K;
      const float* src = valid ? b_address<false>(p, z, k, n) : p.b;
      float* dst = b_s + r * kPitchKContig + kc;
      if (VEC) cp_async16(dst, src, valid); else cp_async4(dst, src, valid);
    }
  }
}

template <bool A_KMAJOR, bool B_NMAJOR, bool VEC, Epilogue EPILOGUE>
__global__ void __launch_bounds__(kThreads, 2) gemm_kernel(GemmParams p) {
  extern __shared__ __align__(16) float shared[];
  const std::int64_t z = blockIdx.z;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates: group and thread-in-group

  float acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int k_tiles = (p.K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) {
      float* stage = shared + s * kStageFloats;
      load_stage<A_KMAJOR, B_NMAJOR, VEC>(p, z, m0, n0, s * kBK, stage, stage + kTileFloats);
    }
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt has landed for every thread; stage kt-1 is no longer read by anyone
    {
      const int next = kt + kStages - 1;
      if (next < k_tiles) {
        float* stage = shared + (next % kStages) * kStageFloats;
        load_stage<A_KMAJOR, B_NMAJOR, VEC>(p, z, m0, n0, next * kBK, stage, stage + kTileFloats);
      }
      cp_async_commit();
    }
    const float* a_s = shared + (kt % kStages) * kStageFloats;
    const float* b_s = a_s + kTileFloats;
    const int k_base = kt * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 8) {
      float offset_lo = 0.0f, offset_hi = 0.0f;
      if (p.a_k_offset) {
        const int k_lo = k_base + kk + t, k_hi = k_lo + 4;
        offset_lo = k_lo < p.K ? __ldg(p.a_k_offset + k_lo) : 0.0f;
        offset_hi = k_hi < p.K ? __ldg(p.a_k_offset + k_hi) : 0.0f;
      }
      std::uint32_t a_frag[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = warp_m * 32 + i * 16 + g;
        float v[4];
        if (A_KMAJOR) {
          v[0] = a_s[r * kPitchKContig + kk + t];
          v[1] = a_s[(r + 8) * kPitchKContig + kk + t];
          v[2] = a_s[r * kPitchKContig + kk + t + 4];
          v[3] = a_s[(r + 8) * kPitchKContig + kk + t + 4];
        } else {
          v[0] = a_s[(kk + t) * kPitchRowContig + r];
          v[1] = a_s[(kk + t) * kPitchRowContig + r + 8];
          v[2] = a_s[(kk + t + 4) * kPitchRowContig + r];
          v[3] = a_s[(kk + t + 4) * kPitchRowContig + r + 8];
        }
        a_frag[i][0] = to_tf32(v[0] - offset_lo);
        a_frag[i][1] = to_tf32(v[1] - offset_lo);
        a_frag[i][2] = to_tf32(v[2] - offset_hi);
        a_frag[i][3] = to_tf32(v[3] - offset_hi);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = warp_n * 64 + j * 8 + g;
        std::uint32_t b_frag[2];
        if (B_NMAJOR) {
          b_frag[0] = to_tf32(b_s[(kk + t) * kPitchRowContig + c]);
          b_frag[1] = to_tf32(b_s[(kk + t + 4) * kPitchRowContig + c]);
        } else {
          b_frag[0] = to_tf32(b_s[c * kPitchKContig + kk + t]);
          b_frag[1] = to_tf32(b_s[c * kPitchKContig + kk + t + 4]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) mma_tf32(acc[i][j], a_frag[i], b_frag);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue. Thread (g, t) holds, for mma tile (i, j): rows r0 = .. + g and r0 + 8, columns j*8 + 2t and +1.
  const int col_base = n0 + warp_n * 64;
  if (col_base >= p.N) return;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * 32 + i * 16 + h * 8 + g;
      if (EPILOGUE == Epilogue::PackSigns) {
        std::uint64_t nz = 0, neg = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = acc[i][j][h * 2 + e];
            const int bit = j * 8 + 2 * t + e;
            nz |= static_cast<std::uint64_t>(v != 0.0f) << bit;
            neg |= static_cast<std::uint64_t>(v < 0.0f) << bit;
          }
        }
        // The 4 threads of a group hold disjoint bits of the same row's word.
        nz |= __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(nz), 1);
        nz |= __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(nz), 2);
        neg |= __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(neg), 1);
        neg |= __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(neg), 2);
        if (t == 0 && m < p.M) {
          std::uint64_t* channel = p.bits + (z * p.M + m) * (kPlanes * p.words);
          const int word = col_base / kBitsPerWord;
          channel[word] = nz;
          channel[p.words + word] = neg;
        }
      } else {
        float sq = 0.0f;
        float* row = p.c + z * p.c_batch + static_cast<std::int64_t>(m) * p.ldc;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int n = col_base + j * 8 + 2 * t;
          const float v0 = acc[i][j][h * 2], v1 = acc[i][j][h * 2 + 1];
          if (m < p.M) {
            if (n < p.N) row[n] = v0;
            if (n + 1 < p.N) row[n + 1] = v1;
          }
          sq += v0 * v0 + v1 * v1;  // zero-filled columns contribute exactly 0
        }
        if (EPILOGUE == Epilogue::SumSquares) {
          sq += __shfl_xor_sync(0xffffffffu, sq, 1);
          sq += __shfl_xor_sync(0xffffffffu, sq, 2);
          if (t == 0 && m < p.M) atomicAdd(p.sum_squares + z * p.M + m, sq);
        }
      }
    }
  }
}

}  // namespace crosslayer::tf32
