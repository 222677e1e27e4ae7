// Ternary dot kernels with AVX-512 VPOPCNTDQ: 8 words per vector for the Gram, 4 (AVX-512VL) for the search.
#include <immintrin.h>

#include <cstdint>

#include "ternary_kernels.h"

namespace crosslayer::detail {
namespace {

#define XL_TARGET __attribute__((target("popcnt,avx512f,avx512vl,avx512vpopcntdq")))

struct Ops {
  static constexpr int W = 8;
  using Vec = __m512i;
  using Acc = __m512i;
  XL_TARGET static inline Vec load(const std::uint64_t* p) { return _mm512_loadu_si512(p); }
  XL_TARGET static inline Acc zero() { return _mm512_setzero_si512(); }
  // Ternary-logic immediates over (both, neg_a, neg_b) = (0xF0, 0xCC, 0xAA): both & (neg_a ^ neg_b) = 0x60 picks
  // opposite signs, both & ~(neg_a ^ neg_b) = 0x90 equal signs; one instruction each.
  XL_TARGET static inline void accumulate(Acc& pairs, Acc& opposite, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m512i both = _mm512_and_si512(nz_a, nz_b);
    pairs = _mm512_add_epi64(pairs, _mm512_popcnt_epi64(both));
    opposite = _mm512_add_epi64(opposite, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(both, neg_a, neg_b, 0x60)));
  }
  XL_TARGET static inline void accumulate_dot(Acc& dot, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m512i both = _mm512_and_si512(nz_a, nz_b);
    const __m512i same = _mm512_ternarylogic_epi64(both, neg_a, neg_b, 0x90);
    const __m512i opposite = _mm512_ternarylogic_epi64(both, neg_a, neg_b, 0x60);
    dot = _mm512_sub_epi64(_mm512_add_epi64(dot, _mm512_popcnt_epi64(same)), _mm512_popcnt_epi64(opposite));
  }
  XL_TARGET static inline void accumulate_xor(Acc& acc, Vec a, Vec b) {
    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(a, b)));
  }
  XL_TARGET static inline std::int64_t reduce(Acc acc) { return _mm512_reduce_add_epi64(acc); }
};

// Search rows are short (Dt=320 -> 5 words per plane): a 512-bit vector would need a masked load and carry 3 empty
// lanes through every operation; 256-bit vectors plus scalar words for the rest cover a row exactly.
struct SearchOps {
  static constexpr int W = 4;
  using Vec = __m256i;
  using Acc = __m256i;
  XL_TARGET static inline Vec load(const std::uint64_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  XL_TARGET static inline Acc zero() { return _mm256_setzero_si256(); }
  XL_TARGET static inline void accumulate_dot(Acc& dot, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m256i both = _mm256_and_si256(nz_a, nz_b);
    const __m256i same = _mm256_ternarylogic_epi64(both, neg_a, neg_b, 0x90);
    const __m256i opposite = _mm256_ternarylogic_epi64(both, neg_a, neg_b, 0x60);
    dot = _mm256_sub_epi64(_mm256_add_epi64(dot, _mm256_popcnt_epi64(same)), _mm256_popcnt_epi64(opposite));
  }
  XL_TARGET static inline void accumulate_xor(Acc& acc, Vec a, Vec b) {
    acc = _mm256_add_epi64(acc, _mm256_popcnt_epi64(_mm256_xor_si256(a, b)));
  }
  XL_TARGET static inline std::int64_t reduce(Acc acc) {
    const __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    return _mm_cvtsi128_si64(sum) + _mm_extract_epi64(sum, 1);
  }
};

#include "ternary_kernels_impl.inc"

#undef XL_TARGET

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vpopcntdq");
}

}  // namespace

const TernaryKernels& kernels_avx512_vpopcntdq() {
  static const TernaryKernels table{"avx512_vpopcntdq", &supported, &gram_tile, &search_block,
                                    &gram_tile_compact, &search_block_compact};
  return table;
}

}  // namespace crosslayer::detail
