// crosslayer/compact_codes.h — the compact sign-code layout (one live bit per channel + one sign plane).
//
// Why: a pooled channel P[k] = sum_i a_ik x_i is zero only when its guidance channel a_k is zero at every position,
// so a channel's "nonzero" plane (codes.h) is, on real images, all ones or all zeros (98.8% full, 1.2% empty, none
// partial on scene15). One bit per channel then carries what that plane did, and the code halves.
//
// Contract (per image, uint64 words, little-endian bit order as in codes.h: value j in word j / 64, bit j % 64)
//   live[live_words(Dk)]            bit k set <=> channel k has any nonzero value; bits >= Dk are zero
//   sign[Dk][words_per_plane(Dt)]   bit j of channel k set <=> P[k][j] < 0; all zero for a dead channel;
//                                   bits >= Dt are zero
//   so an image is compact_words_per_image(Dk, Dt) = ceil(Dk/64) + Dk * ceil(Dt/64) words, and a batch is
//   bits[n][compact_words_per_image] (C-contiguous, images back to back).
//   Within a live channel every value is +1 or -1: an exact zero value of a live channel is coded as +1. The
//   2-plane -> compact conversion therefore refuses codes with a partial channel (some but not all values zero)
//   unless asked to be lossy; on real codes an exact zero inside a live channel has not been seen (see CHANGELOG).
//
// Ternary dot product of codes q, x over a channel set S:
//   dot = sum_{k in S, live in q and x} Dt - 2 * popcount(sign_q[k] XOR sign_x[k])
//   which equals the codes.h dot product of the same codes expanded to two planes (live channel -> all-ones
//   nonzero plane), one popcount a word instead of three.
#pragma once
#include <cstdint>

#include "crosslayer/codes.h"

namespace crosslayer {

// Which layout a CodeMatrix's bits follow.
enum class CodeLayout : int { kTwoPlane = 0, kCompact = 1 };

// uint64 words of an image's live bits.
inline constexpr std::int64_t live_words(std::int64_t dk) { return (dk + kBitsPerWord - 1) / kBitsPerWord; }
// uint64 words one compact image occupies.
inline constexpr std::int64_t compact_words_per_image(std::int64_t dk, std::int64_t dt) {
  return live_words(dk) + dk * words_per_plane(dt);
}
// uint64 words one image occupies in `layout`.
inline constexpr std::int64_t image_words(CodeLayout layout, std::int64_t dk, std::int64_t dt) {
  return layout == CodeLayout::kCompact ? compact_words_per_image(dk, dt) : words_per_image(dk, dt);
}
inline bool channel_live(const std::uint64_t* image, std::int64_t k) {
  return (image[k / kBitsPerWord] >> (k % kBitsPerWord)) & 1u;
}
// First word of channel k's sign row in a compact image.
inline const std::uint64_t* compact_sign_row(const std::uint64_t* image, std::int64_t dk, std::int64_t dt,
                                             std::int64_t k) {
  return image + live_words(dk) + k * words_per_plane(dt);
}

}  // namespace crosslayer
