// Sign packing of pooled channels (crosslayer/sign_pack.h) and its run-time choice of path.
//
// Finiteness rides along in the packing pass: for finite v, v - v is +0.0 (all bits clear) in round-to-nearest, and
// NaN for an infinity or a NaN, so OR-ing the bit patterns of v - v over a channel leaves zero exactly when every
// value is finite. This file is compiled without -ffast-math / -ffinite-math-only, so v - v is not folded to 0.
// The separate scan this replaces read every pooled value a second time (~a third of the epilogue at bf16).
#include "crosslayer/sign_pack.h"

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "crosslayer/codes.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CROSSLAYER_SIGN_PACK_X86 1
#endif

namespace crosslayer {
namespace {

// Bits j < count of one word, and whether those values are finite.
bool pack_word_scalar(const float* values, std::int64_t count, std::uint64_t& nonzero, std::uint64_t& negative) {
  std::uint64_t nz = 0, neg = 0;
  bool finite = true;
  for (std::int64_t j = 0; j < count; ++j) {
    const float v = values[j];
    nz |= static_cast<std::uint64_t>(v != 0.0f) << j;
    neg |= static_cast<std::uint64_t>(v < 0.0f) << j;
    finite &= std::fabs(v) <= FLT_MAX;  // false for inf and NaN
  }
  nonzero = nz;
  negative = neg;
  return finite;
}

ChannelSigns pack_channel_portable(const float* values, std::int64_t dt, std::uint64_t* nonzero,
                                   std::uint64_t* negative) {
  const std::int64_t words = words_per_plane(dt);
  std::uint64_t any = 0;
  bool finite = true;
#if defined(__SSE2__)
  const __m128 zero = _mm_setzero_ps();
  __m128 not_finite = _mm_setzero_ps();  // OR of the bit patterns of v - v
#endif
  for (std::int64_t w = 0; w < words; ++w) {
    const std::int64_t begin = w * kBitsPerWord;
    const std::int64_t count = (dt - begin) < kBitsPerWord ? (dt - begin) : kBitsPerWord;
    std::uint64_t nz = 0, neg = 0;
#if defined(__SSE2__)
    if (count == kBitsPerWord) {
      for (int j = 0; j < kBitsPerWord; j += 4) {
        const __m128 v = _mm_loadu_ps(values + begin + j);
        // cmpeq is false for NaN, so NaN counts as nonzero, as `v != 0` does; cmplt is false for NaN and -0.0
        nz |= static_cast<std::uint64_t>(~_mm_movemask_ps(_mm_cmpeq_ps(v, zero)) & 0xF) << j;
        neg |= static_cast<std::uint64_t>(_mm_movemask_ps(_mm_cmplt_ps(v, zero))) << j;
        not_finite = _mm_or_ps(not_finite, _mm_sub_ps(v, v));
      }
    } else {
      finite &= pack_word_scalar(values + begin, count, nz, neg);
    }
#else
    finite &= pack_word_scalar(values + begin, count, nz, neg);
#endif
    if (nonzero) nonzero[w] = nz;
    negative[w] = neg;
    any |= nz;
  }
#if defined(__SSE2__)
  // all bits clear compares equal to zero; a NaN pattern never does
  finite &= _mm_movemask_ps(_mm_cmpeq_ps(not_finite, zero)) == 0xF;
#endif
  return ChannelSigns{any != 0, finite};
}

#if defined(CROSSLAYER_SIGN_PACK_X86)

bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}

// Bits of 16 values into bit `shift` up of the word's masks; the v - v pattern into `not_finite`.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void pack16_avx512(__m512 v, int shift,
                                                                               std::uint64_t& nz, std::uint64_t& neg,
                                                                               __m512i& not_finite) {
  const __m512 zero = _mm512_setzero_ps();
  // NEQ_UQ: true for NaN (unordered), as `v != 0`; LT_OQ: false for NaN and -0.0, as `v < 0`
  nz |= static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ)) << shift;
  neg |= static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ)) << shift;
  not_finite = _mm512_or_si512(not_finite, _mm512_castps_si512(_mm512_sub_ps(v, v)));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) ChannelSigns pack_channel_avx512(const float* values,
                                                                                      std::int64_t dt,
                                                                                      std::uint64_t* nonzero,
                                                                                      std::uint64_t* negative) {
  const std::int64_t full_words = dt / kBitsPerWord;
  const std::int64_t tail = dt % kBitsPerWord;
  __m512i not_finite = _mm512_setzero_si512();
  std::uint64_t any = 0;
  for (std::int64_t w = 0; w < full_words; ++w) {
    const float* v = values + w * kBitsPerWord;
    std::uint64_t nz = 0, neg = 0;
    pack16_avx512(_mm512_loadu_ps(v), 0, nz, neg, not_finite);
    pack16_avx512(_mm512_loadu_ps(v + 16), 16, nz, neg, not_finite);
    pack16_avx512(_mm512_loadu_ps(v + 32), 32, nz, neg, not_finite);
    pack16_avx512(_mm512_loadu_ps(v + 48), 48, nz, neg, not_finite);
    if (nonzero) nonzero[w] = nz;
    negative[w] = neg;
    any |= nz;
  }
  if (tail) {
    // Masked-off lanes load as +0.0 (no fault past the end of the buffer): not nonzero, not negative, finite, so
    // the padding bits come out clear.
    const float* v = values + full_words * kBitsPerWord;
    std::uint64_t nz = 0, neg = 0;
    for (int q = 0; q * 16 < tail; ++q) {
      const std::int64_t left = tail - q * 16;
      const __mmask16 lanes = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
      pack16_avx512(_mm512_maskz_loadu_ps(lanes, v + q * 16), q * 16, nz, neg, not_finite);
    }
    if (nonzero) nonzero[full_words] = nz;
    negative[full_words] = neg;
    any |= nz;
  }
  return ChannelSigns{any != 0, _mm512_test_epi32_mask(not_finite, not_finite) == 0};
}

#endif  // CROSSLAYER_SIGN_PACK_X86

struct Path {
  const char* name;
  PackChannelFn kernel;
  bool (*supported)();
};

bool always() { return true; }

constexpr Path kAllPaths[] = {
#if defined(CROSSLAYER_SIGN_PACK_X86)
    {"avx512", &pack_channel_avx512, &cpu_has_avx512},
#endif
    {"portable", &pack_channel_portable, &always},
};

const Path* fastest_supported() {
  for (const Path& path : kAllPaths)
    if (path.supported()) return &path;
  return &kAllPaths[sizeof(kAllPaths) / sizeof(kAllPaths[0]) - 1];
}

std::atomic<const Path*>& active_slot() {
  static std::atomic<const Path*> slot{fastest_supported()};
  return slot;
}

}  // namespace

PackChannelFn sign_pack_kernel() { return active_slot().load(std::memory_order_acquire)->kernel; }

const char* sign_pack_path() { return active_slot().load(std::memory_order_acquire)->name; }

const char* set_sign_pack_path(const char* name) {
  for (const Path& path : kAllPaths) {
    if (std::strcmp(path.name, name) != 0) continue;
    if (!path.supported()) return "this CPU does not support that sign packing path";
    active_slot().store(&path, std::memory_order_release);
    return "";
  }
  return "unknown sign packing path (expected avx512 or portable)";
}

int sign_pack_path_count() {
  int count = 0;
  for (const Path& path : kAllPaths) count += path.supported() ? 1 : 0;
  return count;
}

const char* sign_pack_path_name(int index) {
  for (const Path& path : kAllPaths) {
    if (!path.supported()) continue;
    if (index-- == 0) return path.name;
  }
  return "";
}

}  // namespace crosslayer
