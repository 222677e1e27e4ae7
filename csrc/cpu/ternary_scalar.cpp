// Scalar ternary dot kernels, one word at a time: with the hardware POPCNT instruction, and a portable fallback
// (bit-parallel counting, no target flags) for CPUs without it.
#include <cstdint>

#include "ternary_kernels.h"

namespace crosslayer::detail {

namespace hardware_popcnt {
namespace {

#define XL_TARGET __attribute__((target("popcnt")))

struct Ops {
  static constexpr int W = 1;
  using Vec = std::uint64_t;
  using Acc = std::int64_t;
  XL_TARGET static inline Vec load(const std::uint64_t* p) { return *p; }
  XL_TARGET static inline Acc zero() { return 0; }
  XL_TARGET static inline void accumulate(Acc& pairs, Acc& opposite, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const std::uint64_t both = nz_a & nz_b;
    pairs += __builtin_popcountll(both);
    opposite += __builtin_popcountll(both & (neg_a ^ neg_b));
  }
  XL_TARGET static inline void accumulate_dot(Acc& dot, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const std::uint64_t both = nz_a & nz_b, opposite = both & (neg_a ^ neg_b);
    dot += __builtin_popcountll(both ^ opposite);
    dot -= __builtin_popcountll(opposite);
  }
  XL_TARGET static inline void accumulate_xor(Acc& acc, Vec a, Vec b) { acc += __builtin_popcountll(a ^ b); }
  XL_TARGET static inline std::int64_t reduce(Acc acc) { return acc; }
};

using SearchOps = Ops;

#include "ternary_kernels_impl.inc"

#undef XL_TARGET

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("popcnt");
}

}  // namespace
}  // namespace hardware_popcnt

namespace portable {
namespace {

#define XL_TARGET

inline std::int64_t popcount64(std::uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<std::int64_t>((v * 0x0101010101010101ULL) >> 56);
}

struct Ops {
  static constexpr int W = 1;
  using Vec = std::uint64_t;
  using Acc = std::int64_t;
  static inline Vec load(const std::uint64_t* p) { return *p; }
  static inline Acc zero() { return 0; }
  static inline void accumulate(Acc& pairs, Acc& opposite, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const std::uint64_t both = nz_a & nz_b;
    pairs += popcount64(both);
    opposite += popcount64(both & (neg_a ^ neg_b));
  }
  static inline void accumulate_dot(Acc& dot, Vec nz_a, Vec neg_a, Vec nz_b, Vec neg_b) {
    const std::uint64_t both = nz_a & nz_b, opposite = both & (neg_a ^ neg_b);
    dot += popcount64(both ^ opposite);
    dot -= popcount64(opposite);
  }
  static inline void accumulate_xor(Acc& acc, Vec a, Vec b) { acc += popcount64(a ^ b); }
  static inline std::int64_t reduce(Acc acc) { return acc; }
};

using SearchOps = Ops;

#include "ternary_kernels_impl.inc"

#undef XL_TARGET

bool supported() { return true; }

}  // namespace
}  // namespace portable

const TernaryKernels& kernels_popcnt() {
  static const TernaryKernels table{"popcnt", &hardware_popcnt::supported, &hardware_popcnt::gram_tile,
                                      &hardware_popcnt::search_block, &hardware_popcnt::gram_tile_compact,
                                      &hardware_popcnt::search_block_compact};
  return table;
}

const TernaryKernels& kernels_portable() {
  static const TernaryKernels table{"portable", &portable::supported, &portable::gram_tile, &portable::search_block,
                                      &portable::gram_tile_compact, &portable::search_block_compact};
  return table;
}

}  // namespace crosslayer::detail
