// Ternary dot kernels with AVX2: 4 words per vector, popcount by nibble lookup (vpshufb) summed with vpsadbw.
#include <immintrin.h>

#include <cstdint>

#include "ternary_kernels.h"

namespace crosslayer::detail {
namespace {

#define XL_TARGET __attribute__((target("popcnt,avx2")))

struct Ops {
  static constexpr int W = 4;
  using Vec = __m256i;
  using Acc = __m256i;
  XL_TARGET static inline Vec load(const std::uint64_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  XL_TARGET static inline Acc zero() { return _mm256_setzero_si256(); }
  XL_TARGET static inline __m256i popcount(__m256i v) {
    const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(v, low_nibbles);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
    const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lookup, lo), _mm256_shuffle_epi8(lookup, hi));
    return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
  }
  XL_TARGET static inline void accumulate(Acc& pairs, Acc& opposite, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m256i both = _mm256_and_si256(nz_a, nz_b);
    pairs = _mm256_add_epi64(pairs, popcount(both));
    opposite = _mm256_add_epi64(opposite, popcount(_mm256_and_si256(both, _mm256_xor_si256(neg_a, neg_b))));
  }
  XL_TARGET static inline void accumulate_dot(Acc& dot, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m256i both = _mm256_and_si256(nz_a, nz_b);
    const __m256i opposite = _mm256_and_si256(both, _mm256_xor_si256(neg_a, neg_b));
    const __m256i same = _mm256_xor_si256(both, opposite);
    dot = _mm256_sub_epi64(_mm256_add_epi64(dot, popcount(same)), popcount(opposite));
  }
  XL_TARGET static inline void accumulate_xor(Acc& acc, Vec a, Vec b) {
    acc = _mm256_add_epi64(acc, popcount(_mm256_xor_si256(a, b)));
  }
  XL_TARGET static inline std::int64_t reduce(Acc acc) {
    const __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    return _mm_cvtsi128_si64(sum) + _mm_extract_epi64(sum, 1);
  }
};

using SearchOps = Ops;

#include "ternary_kernels_impl.inc"

#undef XL_TARGET

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx2");
}

}  // namespace

const TernaryKernels& kernels_avx2() {
  static const TernaryKernels table{"avx2", &supported, &gram_tile, &search_block, &gram_tile_compact,
                                      &search_block_compact};
  return table;
}

}  // namespace crosslayer::detail
