// Ternary dot kernels with AVX-512 VPOPCNTDQ: 8 words per vector, masked loads for short planes (Dt=320 -> 5 words).
#include <immintrin.h>

#include <cstdint>

#include "ternary_kernels.h"

namespace crosslayer::detail {
namespace {

#define XL_TARGET __attribute__((target("avx512f,avx512vpopcntdq")))

struct Ops {
  static constexpr int W = 8;
  using Vec = __m512i;
  using Acc = __m512i;
  XL_TARGET static inline Vec load(const std::uint64_t* p, std::int64_t valid) {
    const __mmask8 mask = static_cast<__mmask8>(valid >= 8 ? 0xFF : (1u << valid) - 1);
    return _mm512_maskz_loadu_epi64(mask, p);
  }
  XL_TARGET static inline Acc zero() { return _mm512_setzero_si512(); }
  XL_TARGET static inline void accumulate(Acc& pairs, Acc& opposite, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const __m512i both = _mm512_and_si512(nz_a, nz_b);
    pairs = _mm512_add_epi64(pairs, _mm512_popcnt_epi64(both));
    opposite = _mm512_add_epi64(opposite, _mm512_popcnt_epi64(_mm512_and_si512(both, _mm512_xor_si512(neg_a, neg_b))));
  }
  XL_TARGET static inline std::int64_t reduce(Acc acc) { return _mm512_reduce_add_epi64(acc); }
};

#include "ternary_kernels_impl.inc"

#undef XL_TARGET

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
}

}  // namespace

const TernaryKernels& kernels_avx512_vpopcntdq() {
  static const TernaryKernels table{"avx512_vpopcntdq", &supported, &dot_row};
  return table;
}

}  // namespace crosslayer::detail
