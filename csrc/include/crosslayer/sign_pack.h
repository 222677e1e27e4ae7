// crosslayer/sign_pack.h — sign quantisation of one channel into the two bit-planes of codes.h.
#pragma once
#include <cstdint>

#include "crosslayer/codes.h"

namespace crosslayer {

// values[dt] -> nonzero[words_per_plane(dt)], negative[words_per_plane(dt)]; padding bits are written as zero.
inline void pack_signs(const float* values, std::int64_t dt, std::uint64_t* nonzero, std::uint64_t* negative) {
  const std::int64_t words = words_per_plane(dt);
  for (std::int64_t w = 0; w < words; ++w) {
    const std::int64_t begin = w * kBitsPerWord;
    const std::int64_t count = (dt - begin) < kBitsPerWord ? (dt - begin) : kBitsPerWord;
    std::uint64_t nz = 0, neg = 0;
    for (std::int64_t j = 0; j < count; ++j) {
      const float v = values[begin + j];
      nz |= static_cast<std::uint64_t>(v != 0.0f) << j;
      neg |= static_cast<std::uint64_t>(v < 0.0f) << j;
    }
    nonzero[w] = nz;
    negative[w] = neg;
  }
}

}  // namespace crosslayer
