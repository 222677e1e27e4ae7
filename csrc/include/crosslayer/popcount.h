// crosslayer/popcount.h — which popcount implementation the CPU ternary kernels (gram_cpu, search_cpu) use.
//
// Contract
//   Paths, fastest first: "avx512_vpopcntdq", "avx2", "popcnt" (scalar hardware instruction), "portable" (plain C++).
//   At load time the fastest path this CPU supports is chosen (run-time dispatch: the module is compiled without
//   -march flags; each path lives in functions compiled for its own target). Tests and benchmarks can force another.
//   Switching paths while a kernel runs is not supported (callers switch between calls).
#pragma once

namespace crosslayer {

// Name of the path in use.
const char* popcount_path();
// Selects a path by name; returns an empty string on success, otherwise why not (unknown name, CPU lacks it).
const char* set_popcount_path(const char* name);
// Number of paths this CPU supports and the name of the i-th (fastest first).
int popcount_path_count();
const char* popcount_path_name(int index);

}  // namespace crosslayer
