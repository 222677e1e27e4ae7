// crosslayer/sign_pack.h — sign quantisation of one channel into the two bit-planes of codes.h.
#pragma once
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "crosslayer/codes.h"

namespace crosslayer {

namespace detail {

// Bits j < count of one word: bit j of nonzero <=> values[j] != 0, of negative <=> values[j] < 0 (NaN: nonzero, not
// negative; -0.0: neither).
inline void pack_word_scalar(const float* values, std::int64_t count, std::uint64_t& nonzero, std::uint64_t& negative) {
  std::uint64_t nz = 0, neg = 0;
  for (std::int64_t j = 0; j < count; ++j) {
    const float v = values[j];
    nz |= static_cast<std::uint64_t>(v != 0.0f) << j;
    neg |= static_cast<std::uint64_t>(v < 0.0f) << j;
  }
  nonzero = nz;
  negative = neg;
}

}  // namespace detail

// values[dt] -> nonzero[words_per_plane(dt)], negative[words_per_plane(dt)]; padding bits are written as zero.
// Full words take four values per comparison (SSE2, part of every x86-64 CPU): the scalar loop cost ~3 ns a value,
// a third of the epilogue when the pooling itself runs elsewhere (OpenVINO's graph at bf16).
inline void pack_signs(const float* values, std::int64_t dt, std::uint64_t* nonzero, std::uint64_t* negative) {
  const std::int64_t words = words_per_plane(dt);
  for (std::int64_t w = 0; w < words; ++w) {
    const std::int64_t begin = w * kBitsPerWord;
    const std::int64_t count = (dt - begin) < kBitsPerWord ? (dt - begin) : kBitsPerWord;
#if defined(__SSE2__)
    if (count == kBitsPerWord) {
      const __m128 zero = _mm_setzero_ps();
      std::uint64_t nz = 0, neg = 0;
      for (int j = 0; j < kBitsPerWord; j += 4) {
        const __m128 v = _mm_loadu_ps(values + begin + j);
        // cmpeq is false for NaN, so NaN counts as nonzero, as `v != 0` does; cmplt is false for NaN and -0.0
        nz |= static_cast<std::uint64_t>(~_mm_movemask_ps(_mm_cmpeq_ps(v, zero)) & 0xF) << j;
        neg |= static_cast<std::uint64_t>(_mm_movemask_ps(_mm_cmplt_ps(v, zero))) << j;
      }
      nonzero[w] = nz;
      negative[w] = neg;
      continue;
    }
#endif
    detail::pack_word_scalar(values + begin, count, nonzero[w], negative[w]);
  }
}

}  // namespace crosslayer
