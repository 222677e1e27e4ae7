// crosslayer/codes.h — the 2-bit sign-code layout shared by every kernel (CPU and CUDA).
//
// Contract
//   A representation P of one image has Dk guidance channels, each a vector of Dt values (Dt is the local-feature
//   dimension after PCA). Its sign code stores sign(P) in {-1, 0, +1} as two bit-planes per channel:
//     plane 0 "nonzero":  bit j set  <=>  P[k][j] != 0
//     plane 1 "negative": bit j set  <=>  P[k][j] <  0     (never set where the nonzero bit is clear)
//   Each plane holds Dt bits packed little-endian into words_per_plane(Dt) = ceil(Dt / 64) uint64 words:
//   value j lives in word j / 64, bit j % 64 (bit 0 = least significant). Bits at positions >= Dt are zero.
//   Memory order of a batch: bits[n][Dk][2][words] (C-contiguous), i.e. one channel's two planes are adjacent
//   so a masked search touches contiguous 2*words runs per selected channel.
//   Alongside the bits every image carries channel_mean[n][Dk] (float32): the mean guidance activation of each
//   channel over the N spatial positions; retrieval uses it to select channels.
//
// Ternary dot product of two codes q, x over a channel set S:
//   dot = sum_{k in S} popcount(nz_q & nz_x) - 2 * popcount(nz_q & nz_x & (neg_q ^ neg_x))
#pragma once
#include <cstddef>
#include <cstdint>

namespace crosslayer {

constexpr int kBitsPerWord = 64;
constexpr int kPlanes = 2;  // 0 = nonzero, 1 = negative

inline constexpr std::int64_t words_per_plane(std::int64_t dt) { return (dt + kBitsPerWord - 1) / kBitsPerWord; }
// uint64 words one channel occupies (both planes).
inline constexpr std::int64_t words_per_channel(std::int64_t dt) { return kPlanes * words_per_plane(dt); }
// uint64 words one image occupies.
inline constexpr std::int64_t words_per_image(std::int64_t dk, std::int64_t dt) { return dk * words_per_channel(dt); }

}  // namespace crosslayer
