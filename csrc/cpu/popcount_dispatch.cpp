// Run-time choice of the popcount path (crosslayer/popcount.h): the fastest one the CPU supports, chosen once.
#include <atomic>
#include <cstring>

#include "crosslayer/popcount.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace detail {
namespace {

using TableGetter = const TernaryKernels& (*)();
constexpr TableGetter kAllPaths[] = {&kernels_avx512_vpopcntdq, &kernels_avx2, &kernels_popcnt, &kernels_portable};

const TernaryKernels* fastest_supported() {
  for (TableGetter get : kAllPaths)
    if (get().supported()) return &get();
  return &kernels_portable();
}

std::atomic<const TernaryKernels*>& active_slot() {
  static std::atomic<const TernaryKernels*> slot{fastest_supported()};
  return slot;
}

}  // namespace

const TernaryKernels& active_kernels() { return *active_slot().load(std::memory_order_acquire); }

}  // namespace detail

const char* popcount_path() { return detail::active_kernels().name; }

const char* set_popcount_path(const char* name) {
  for (detail::TableGetter get : detail::kAllPaths) {
    if (std::strcmp(get().name, name) != 0) continue;
    if (!get().supported()) return "this CPU does not support that popcount path";
    detail::active_slot().store(&get(), std::memory_order_release);
    return "";
  }
  return "unknown popcount path (expected avx512_vpopcntdq, avx2, popcnt or portable)";
}

int popcount_path_count() {
  int count = 0;
  for (detail::TableGetter get : detail::kAllPaths) count += get().supported() ? 1 : 0;
  return count;
}

const char* popcount_path_name(int index) {
  for (detail::TableGetter get : detail::kAllPaths) {
    if (!get().supported()) continue;
    if (index-- == 0) return get().name;
  }
  return "";
}

}  // namespace crosslayer
