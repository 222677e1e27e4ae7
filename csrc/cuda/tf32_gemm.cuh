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
// a code word pool to exactly 0). Fragments are read from shared memory with 64/128-bit loads (see tile_row /
// tile_col), bank-conflict free.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "crosslayer/codes.h"

namespace crosslayer::tf32 {

// MT (template parameter): m16 tiles per warp, 2 or 4. The CTA is 4 x 2 warps, so its tile is (64 * MT) x 128:
// 128 x 128 (MT = 2, two CTAs per SM) or 256 x 128 (MT = 4: half the shared-memory and L2 traffic per mma, one CTA
// per SM).
constexpr int kBN = 128, kBK = 32, kStages = 3, kThreads = 256;
template <int MT>
__host__ __device__ constexpr int block_m() { return 64 * MT; }
// Shared pitches (floats). Fragment reads are vectorised (64- or 128-bit) and bank-conflict free with these, rows stay
// 16-byte aligned for cp.async: [rows][k] tiles use 40 (= 8 mod 32); [k][rows] tiles use 136 (= 8 mod 32), except a
// [k][n] B tile read with paired k (A K-major), which uses 132 (= 4 mod 32). See the fragment loads below.
constexpr int kPitchKContig = kBK + 8;
template <int ROWS>
__host__ __device__ constexpr int pitch_row_contig() { return ROWS + 8; }   // = 8 mod 32 for ROWS = 128, 256
constexpr int kPitchBPairedK = kBN + 4;                                      // = 4 mod 32
static_assert(kBN / 2 == kBitsPerWord, "a warp's 64 columns must be exactly one code word");

enum class Epilogue : int { StoreFloat, StoreTf32, SumSquares, PackSigns };

struct GemmParams {
  int M, N, K;
  const float* a;
  std::int64_t a_batch, lda;
  int a_rows_per_image;      // M-major A only
  const float* a_k_offset;   // nullable: subtracted from A(m, k) for k < K
  const float* b;
  std::int64_t b_batch, ldb;
  // epilogue targets
  float* c;                  // StoreFloat / StoreTf32 / SumSquares: C(z, m, n) = c[z * c_batch + m * ldc + n]
  std::int64_t c_batch, ldc;
  float* sum_squares;        // SumSquares: [z * M + m] += sum_n C^2
  std::uint64_t* bits;       // PackSigns: channel (z, m) at bits[(z * M + m) * 2 * words]
  std::int64_t words;
};

template <bool A_KMAJOR>
__host__ __device__ constexpr int b_nmajor_pitch() { return A_KMAJOR ? kPitchBPairedK : pitch_row_contig<kBN>(); }
// Shared floats of one pipeline stage's A and B tiles, and the kernel's dynamic shared memory (the pooling GEMM's
// 112 KiB lets two CTAs share an SM).
template <bool A_KMAJOR, int MT>
__host__ __device__ constexpr int a_tile_floats() {
  return A_KMAJOR ? block_m<MT>() * kPitchKContig : kBK * pitch_row_contig<block_m<MT>()>();
}
template <bool A_KMAJOR, bool B_NMAJOR>
__host__ __device__ constexpr int b_tile_floats() { return B_NMAJOR ? kBK * b_nmajor_pitch<A_KMAJOR>() : kBN * kPitchKContig; }
template <bool A_KMAJOR, bool B_NMAJOR, int MT>
__host__ __device__ constexpr int stage_floats() {
  return a_tile_floats<A_KMAJOR, MT>() + b_tile_floats<A_KMAJOR, B_NMAJOR>();
}
template <bool A_KMAJOR, bool B_NMAJOR, int MT>
__host__ __device__ constexpr std::size_t shared_bytes() {
  return sizeof(float) * stage_floats<A_KMAJOR, B_NMAJOR, MT>() * kStages;
}

// float32 -> TF32 operand, rounded to nearest (ties away from zero): the tensor core ignores the low 13 mantissa
// bits, so adding half of that range first turns its truncation into rounding (CUTLASS's round_half_ulp_truncate);
// one integer add instead of a cvt. Inputs are finite (validated), so no carry reaches the exponent's top.
__device__ __forceinline__ std::uint32_t tf32_operand(float v) { return __float_as_uint(v) + 0x1000u; }
// The exact TF32 value the tensor core would use for v, as a float (for operands stored once, read many times).
__device__ __forceinline__ float tf32_value(float v) { return __uint_as_float(tf32_operand(v) & 0xffffe000u); }

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

__device__ __forceinline__ void mma_tf32(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                         std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// Copies a ROWS x COLS tile whose COLS axis is contiguous in global memory (`address(row, col)`) into shared memory
// with the given pitch; out-of-range elements are zero-filled.
template <int ROWS, int COLS, int PITCH, bool VEC, typename Address>
__device__ __forceinline__ void copy_tile(float* dst, int rows_valid, int cols_valid, Address address) {
  constexpr int kWidth = VEC ? 4 : 1;
  constexpr int kPerRow = COLS / kWidth, kTotal = ROWS * kPerRow;
  static_assert(kTotal % kThreads == 0, "copies must divide among the threads");
#pragma unroll(VEC ? 4 : 2)  // the 4-byte fallback has 16 copies per thread: full unrolling would spill
  for (int step = 0; step < kTotal / kThreads; ++step) {
    const int i = threadIdx.x + step * kThreads;
    const int r = i / kPerRow, c = (i % kPerRow) * kWidth;
    // VEC: every extent along a contiguous axis is a multiple of 4, so a 4-wide copy is all in or all out.
    const bool valid = r < rows_valid && c < cols_valid;
    const float* src = address(valid ? r : 0, valid ? c : 0);
    if (VEC) cp_async16(dst + r * PITCH + c, src, valid); else cp_async4(dst + r * PITCH + c, src, valid);
  }
}


// One K step of A (block_m x kBK) and B (kBK x kBN) into a pipeline stage.
template <bool A_KMAJOR, bool B_NMAJOR, bool VEC, int MT>
__device__ __forceinline__ void load_stage(const GemmParams& p, std::int64_t z, int m0, int n0, int k0, float* a_s,
                                           float* b_s) {
  const int m_left = p.M - m0, n_left = p.N - n0, k_left = p.K - k0;
  if (A_KMAJOR)
    copy_tile<block_m<MT>(), kBK, kPitchKContig, VEC>(a_s, m_left, k_left,
                                           [&](int r, int c) { return a_address<true>(p, z, m0 + r, k0 + c); });
  else
    copy_tile<kBK, block_m<MT>(), pitch_row_contig<block_m<MT>()>(), VEC>(a_s, k_left, m_left,
                                             [&](int r, int c) { return a_address<false>(p, z, m0 + c, k0 + r); });
  if (B_NMAJOR)
    copy_tile<kBK, kBN, b_nmajor_pitch<A_KMAJOR>(), VEC>(
        b_s, k_left, n_left, [&](int r, int c) { return b_address<true>(p, z, k0 + r, n0 + c); });
  else
    copy_tile<kBN, kBK, kPitchKContig, VEC>(b_s, n_left, k_left,
                                           [&](int r, int c) { return b_address<false>(p, z, k0 + c, n0 + r); });
}

// Which tile rows/columns a thread's mma fragments stand for. The mma's k order within a k8 step, its row order
// within the warp's 32 rows and its column order within the warp's 64 columns are free (a consistent permutation of
// a sum, and relabelled outputs), so they are chosen to make each thread's operands contiguous in shared memory:
//   A K-major:  the two k of a fragment register pair are adjacent (k = 2t, 2t+1)  -> one 64-bit read per row pair
//   A M-major:  a thread's rows of m-tiles 2p, 2p+1 (x 2 halves) are adjacent      -> one 128-bit read per k and p
//   B N-major:  a thread's columns of n-tiles j = 0..3 (and 4..7) are adjacent     -> one 128-bit read per k
//   B K-major:  natural columns, paired k as for A K-major                         -> one 64-bit read per column
template <bool A_KMAJOR, int MT>
__device__ __forceinline__ int tile_row(int warp_m, int g, int i, int h) {
  return A_KMAJOR ? warp_m * 16 * MT + i * 16 + h * 8 + g
                  : warp_m * 16 * MT + (i / 2) * 32 + g * 4 + (i % 2) * 2 + h;
}
template <bool B_NMAJOR>
__device__ __forceinline__ int tile_col(int warp_n, int j, int n_in_tile) {
  return B_NMAJOR ? warp_n * 64 + (j / 4) * 32 + n_in_tile * 4 + (j % 4) : warp_n * 64 + j * 8 + n_in_tile;
}

template <bool A_KMAJOR, bool B_NMAJOR, bool VEC, bool B_IS_TF32, Epilogue EPILOGUE, int MT>
__global__ void __launch_bounds__(kThreads, MT == 2 ? 2 : 1) gemm_kernel(GemmParams p) {
  static_assert(MT == 2 || MT == 4, "a warp holds 2 or 4 m16 tiles");
  // A K-major B read pairs adjacent k, which only a K-major A provides (checked by emulating the indexing).
  static_assert(A_KMAJOR || B_NMAJOR, "an M-major A needs an N-major B");
  extern __shared__ __align__(16) float shared[];
  const std::int64_t z = blockIdx.z;
  const int m0 = blockIdx.y * block_m<MT>(), n0 = blockIdx.x * kBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates: group and thread-in-group
  constexpr int kPitchB = B_NMAJOR ? b_nmajor_pitch<A_KMAJOR>() : kPitchKContig;
  constexpr int kATile = a_tile_floats<A_KMAJOR, MT>(), kStage = stage_floats<A_KMAJOR, B_NMAJOR, MT>();
  constexpr int kPitchA = A_KMAJOR ? kPitchKContig : pitch_row_contig<block_m<MT>()>();
  // k (within a k8 step) of fragment registers {a0, a1, b0} and {a2, a3, b1}
  const int k_lo = A_KMAJOR ? 2 * t : t, k_hi = A_KMAJOR ? 2 * t + 1 : t + 4;

  float acc[MT][8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int k_tiles = (p.K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) {
      float* stage = shared + s * kStage;
      load_stage<A_KMAJOR, B_NMAJOR, VEC, MT>(p, z, m0, n0, s * kBK, stage, stage + kATile);
    }
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt has landed for every thread; stage kt-1 is no longer read by anyone
    {
      const int next = kt + kStages - 1;
      if (next < k_tiles) {
        float* stage = shared + (next % kStages) * kStage;
        load_stage<A_KMAJOR, B_NMAJOR, VEC, MT>(p, z, m0, n0, next * kBK, stage, stage + kATile);
      }
      cp_async_commit();
    }
    const float* a_s = shared + (kt % kStages) * kStage;
    const float* b_s = a_s + kATile;
    const int k_base = kt * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 8) {
      float off_lo = 0.0f, off_hi = 0.0f;
      if (p.a_k_offset) {
        const int klo = k_base + kk + k_lo, khi = k_base + kk + k_hi;
        off_lo = klo < p.K ? __ldg(p.a_k_offset + klo) : 0.0f;
        off_hi = khi < p.K ? __ldg(p.a_k_offset + khi) : 0.0f;
      }
      std::uint32_t a_frag[MT][4];
      if (A_KMAJOR) {
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const float2 top = *reinterpret_cast<const float2*>(a_s + tile_row<true, MT>(warp_m, g, i, 0) * kPitchA + kk + k_lo);
          const float2 bottom = *reinterpret_cast<const float2*>(a_s + tile_row<true, MT>(warp_m, g, i, 1) * kPitchA + kk + k_lo);
          a_frag[i][0] = tf32_operand(top.x - off_lo);
          a_frag[i][1] = tf32_operand(bottom.x - off_lo);
          a_frag[i][2] = tf32_operand(top.y - off_hi);
          a_frag[i][3] = tf32_operand(bottom.y - off_hi);
        }
      } else {
#pragma unroll
        for (int pair = 0; pair < MT / 2; ++pair) {
          const float* base = a_s + tile_row<false, MT>(warp_m, g, 2 * pair, 0);
          const float4 lo = *reinterpret_cast<const float4*>(base + (kk + k_lo) * kPitchA);
          const float4 hi = *reinterpret_cast<const float4*>(base + (kk + k_hi) * kPitchA);
          std::uint32_t* first = a_frag[2 * pair];
          std::uint32_t* second = a_frag[2 * pair + 1];
          first[0] = tf32_operand(lo.x - off_lo);
          first[1] = tf32_operand(lo.y - off_lo);
          second[0] = tf32_operand(lo.z - off_lo);
          second[1] = tf32_operand(lo.w - off_lo);
          first[2] = tf32_operand(hi.x - off_hi);
          first[3] = tf32_operand(hi.y - off_hi);
          second[2] = tf32_operand(hi.z - off_hi);
          second[3] = tf32_operand(hi.w - off_hi);
        }
      }
      auto b_bits = [](float v) { return B_IS_TF32 ? __float_as_uint(v) : tf32_operand(v); };
      if (B_NMAJOR) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const float* base = b_s + tile_col<true>(warp_n, q * 4, g);
          const float4 lo = *reinterpret_cast<const float4*>(base + (kk + k_lo) * kPitchB);
          const float4 hi = *reinterpret_cast<const float4*>(base + (kk + k_hi) * kPitchB);
          const float lo_v[4] = {lo.x, lo.y, lo.z, lo.w}, hi_v[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) {
            const std::uint32_t b0 = b_bits(lo_v[jj]), b1 = b_bits(hi_v[jj]);
#pragma unroll
            for (int i = 0; i < MT; ++i) mma_tf32(acc[i][q * 4 + jj], a_frag[i], b0, b1);
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 v = *reinterpret_cast<const float2*>(b_s + tile_col<false>(warp_n, j, g) * kPitchB + kk + k_lo);
          const std::uint32_t b0 = b_bits(v.x), b1 = b_bits(v.y);
#pragma unroll
          for (int i = 0; i < MT; ++i) mma_tf32(acc[i][j], a_frag[i], b0, b1);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue. Thread (g, t) holds, for mma tile (i, j), rows tile_row(i, h) and in-tile columns 2t + e
  // (acc[i][j][2h + e]).
  const int col_base = n0 + warp_n * 64;
  if (col_base >= p.N) return;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + tile_row<A_KMAJOR, MT>(warp_m, g, i, h);
      if (EPILOGUE == Epilogue::PackSigns) {
        std::uint64_t nz = 0, neg = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = acc[i][j][h * 2 + e];
            const int bit = tile_col<B_NMAJOR>(0, j, 2 * t + e);
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
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = acc[i][j][h * 2 + e];
            const int n = n0 + tile_col<B_NMAJOR>(warp_n, j, 2 * t + e);
            if (m < p.M && n < p.N) row[n] = EPILOGUE == Epilogue::StoreTf32 ? tf32_value(v) : v;
            sq += v * v;  // zero-filled columns contribute exactly 0
          }
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
