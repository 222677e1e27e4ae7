// crosslayer/sign_pack.h — sign quantisation of one pooled channel into bit words, with its finiteness check.
//
// Contract
//   pack_channel(values, dt, nonzero, negative) reads values[dt] once and writes, words_per_plane(dt) uint64 words
//   each (value j in word j / 64, bit j % 64, as codes.h lays them out; bits >= dt zero):
//     negative[w]   bit j set <=> values[j] < 0            (NaN: no; -0.0: no)
//     nonzero[w]    bit j set <=> values[j] != 0           (NaN: yes; -0.0: no); skipped when nonzero == nullptr
//   and returns live = any value nonzero (the compact layout's live bit) and finite = no value is NaN or infinite.
//   These are the two planes of codes.h and the sign row + live bit of compact_codes.h (the lossy rule: a zero
//   inside a live channel has its sign bit clear, +1), so both layouts come from the same single pass.
//
//   Paths: "avx512" (16 values a comparison into a mask register; AVX-512 F/BW/VL) and "portable" (SSE2 on every
//   x86-64 CPU, 4 values a comparison, and plain C++ for partial words). Every path writes the same bits and returns
//   the same flags. The library is compiled for baseline x86-64; the fastest path this CPU supports is chosen once
//   at load time, and tests and benchmarks can force another (set_sign_pack_path). A pooling call reads the path once
//   at its start, so switching between calls is safe; a call already running keeps the path it started with.
#pragma once
#include <cstdint>

namespace crosslayer {

struct ChannelSigns {
  bool live;
  bool finite;
};

using PackChannelFn = ChannelSigns (*)(const float* values, std::int64_t dt, std::uint64_t* nonzero,
                                       std::uint64_t* negative);

// The kernel of the path in use.
PackChannelFn sign_pack_kernel();
// Name of the path in use.
const char* sign_pack_path();
// Selects a path by name; returns an empty string on success, otherwise why not (unknown name, CPU lacks it).
const char* set_sign_pack_path(const char* name);
// Number of paths this CPU supports and the name of the i-th (fastest first; "" out of range).
int sign_pack_path_count();
const char* sign_pack_path_name(int index);

}  // namespace crosslayer
