// Internal: the per-ISA ternary dot kernels behind gram_cpu/search_cpu, and the dispatch table that picks one.
#pragma once
#include <cstdint>

namespace crosslayer::detail {

// out[j] += dot(a, b_j) for j in [0, nb), b_j = b + j * b_stride (uint64 words); both point at image starts.
// Channels compared: channels[0 .. n_channels) when `channels` is non-null, else channel_begin + [0, n_channels).
using DotRowFn = void (*)(const std::uint64_t* a, const std::uint64_t* b, std::int64_t nb, std::int64_t b_stride,
                          const std::int32_t* channels, std::int64_t channel_begin, std::int64_t n_channels,
                          std::int64_t words_per_plane, std::int32_t* out);

struct TernaryKernels {
  const char* name;
  bool (*supported)();
  DotRowFn dot_row;
};

const TernaryKernels& kernels_avx512_vpopcntdq();
const TernaryKernels& kernels_avx2();
const TernaryKernels& kernels_popcnt();
const TernaryKernels& kernels_portable();

// The table in use (see crosslayer/popcount.h).
const TernaryKernels& active_kernels();

}  // namespace crosslayer::detail
