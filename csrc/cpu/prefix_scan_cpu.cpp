// The coarse stage's scan (crosslayer/prefix_scan.h): memory-bound, so the loop is written for the compiler to
// vectorise at the word's width (vpopcntw/d/q with AVX-512 BITALG/VPOPCNTDQ), items split in cache-sized blocks
// across threads, the query's channels inner so each block of scores stays in L1 while every selected row streams by.
#include "crosslayer/prefix_scan.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "ternary_kernels.h"

namespace crosslayer {
namespace {

// Items a thread scores before moving on: 4,096 int16/int32 scores (8-16 kB) stay in L1 across the channel loop.
constexpr std::int64_t kItemBlock = 32768;

template <typename Word>
inline int popcount_word(Word value) {
  if constexpr (sizeof(Word) == 8) {
    return __builtin_popcountll(value);
  } else {
    return __builtin_popcount(value);
  }
}

template <typename Word, typename Score>
inline void scan_block(const Word* table, std::int64_t n_items, const std::uint64_t* query_words,
                       const std::int32_t* channels, std::int64_t n_channels, int prefix_bits, Score* scores,
                       std::int64_t begin, std::int64_t end) {
  constexpr int kTop = int(sizeof(Word) * 8) - 1;
  const Word mask = Word((Word(1) << prefix_bits) - 1);
  const Score full = Score(prefix_bits);
  for (std::int64_t s = 0; s < n_channels; ++s) {
    const Word query = Word(query_words[s]);
    if ((query >> kTop) == 0) continue;  // a dead query channel scores zero against everything
    const Word* row = table + std::int64_t(channels[s]) * n_items;
    for (std::int64_t i = begin; i < end; ++i) {
      const Word x = row[i];
      const Score live = Score(x >> kTop);
      scores[i] = Score(scores[i] + live * Score(full - Score(2 * popcount_word(Word((x ^ query) & mask)))));
    }
  }
}

#define XL_SCAN_BODY                                                                                              \
  for (std::int64_t begin = first; begin < last; begin += kItemBlock)                                          \
    scan_block<Word, Score>(table, n_items, query_words, channels, n_channels, prefix_bits, scores, begin,     \
                            std::min(last, begin + kItemBlock));

template <typename Word, typename Score>
__attribute__((target("popcnt,avx2,avx512f,avx512bw,avx512vl,avx512bitalg,avx512vpopcntdq"))) void scan_avx512(
    const Word* table, std::int64_t n_items, const std::uint64_t* query_words, const std::int32_t* channels,
    std::int64_t n_channels, int prefix_bits, Score* scores, std::int64_t first, std::int64_t last) {
  XL_SCAN_BODY
}

template <typename Word, typename Score>
__attribute__((target("popcnt,avx2"))) void scan_avx2(const Word* table, std::int64_t n_items,
                                                      const std::uint64_t* query_words, const std::int32_t* channels,
                                                      std::int64_t n_channels, int prefix_bits, Score* scores,
                                                      std::int64_t first, std::int64_t last) {
  XL_SCAN_BODY
}

template <typename Word, typename Score>
void scan_portable(const Word* table, std::int64_t n_items, const std::uint64_t* query_words,
                   const std::int32_t* channels, std::int64_t n_channels, int prefix_bits, Score* scores,
                   std::int64_t first, std::int64_t last) {
  XL_SCAN_BODY
}
#undef XL_SCAN_BODY

bool has_avx512_bitalg() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bitalg") &&
                          __builtin_cpu_supports("avx512vpopcntdq");
  return yes;
}

template <typename Word, typename Score>
void scan(const PrefixScanArgs& args) {
  // Follows the popcount path the rest of the kernels use (crosslayer/popcount.h), so tests can force each one.
  const char* path = detail::active_kernels().name;
  auto* kernel = &scan_portable<Word, Score>;
  if (std::strcmp(path, "avx512_vpopcntdq") == 0 && has_avx512_bitalg()) {
    kernel = &scan_avx512<Word, Score>;
  } else if (std::strcmp(path, "avx512_vpopcntdq") == 0 || std::strcmp(path, "avx2") == 0) {
    kernel = &scan_avx2<Word, Score>;
  }
  const auto* table = static_cast<const Word*>(args.table);
  auto* scores = static_cast<Score*>(args.scores);
  const std::int64_t blocks = (args.n_items + kItemBlock - 1) / kItemBlock;
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1 && threads > 1)
  for (std::int64_t block = 0; block < blocks; ++block) {
    const std::int64_t first = block * kItemBlock;
    kernel(table, args.n_items, args.query_words, args.channels, args.n_channels, args.prefix_bits, scores, first,
           std::min(args.n_items, first + kItemBlock));
  }
}

template <typename Score>
std::string select_top(const TopScoresArgs& args) {
  const auto* scores = static_cast<const Score*>(args.scores);
  const std::int64_t low = args.low, high = -std::int64_t(args.low);
  // A counting pass finds the cut score: every score lies in [low, high], so the histogram is small.
  std::vector<std::int64_t> counts(std::size_t(high - low + 1), 0);
  for (std::int64_t i = 0; i < args.n; ++i) {
    if (scores[i] == args.excluded) continue;
    if (scores[i] < low || scores[i] > high) return "scores: entry " + std::to_string(i) + " lies outside [low, -low]";
    ++counts[std::size_t(scores[i] - low)];
  }
  std::int64_t taken = 0, cut = high - low;
  while (cut > 0 && taken + counts[std::size_t(cut)] < args.k) taken += counts[std::size_t(cut--)];
  const std::int64_t threshold = cut + low;
  // Ids above the cut (all of them fit), then the cut's own in id order; then sorted by score, ties by id.
  std::vector<std::int64_t> ids;
  ids.reserve(std::size_t(std::min(args.k, args.n)));
  for (std::int64_t i = 0; i < args.n; ++i)
    if (scores[i] != args.excluded && scores[i] > threshold) ids.push_back(i);
  for (std::int64_t i = 0; i < args.n && std::int64_t(ids.size()) < args.k; ++i)
    if (scores[i] != args.excluded && scores[i] == threshold) ids.push_back(i);
  std::stable_sort(ids.begin(), ids.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
  std::copy(ids.begin(), ids.end(), args.out_ids);
  *args.out_count = std::int64_t(ids.size());
  return "";
}

}  // namespace

std::string prefix_scores(const PrefixScanArgs& args) {
  if (args.word_bits != 16 && args.word_bits != 32 && args.word_bits != 64) return "word_bits must be 16, 32 or 64";
  if (args.prefix_bits < 1 || args.prefix_bits > args.word_bits - 1) return "prefix_bits must be in [1, word_bits - 1]";
  if (args.n_items < 0 || args.dk < 1 || args.n_channels < 0) return "n_items >= 0, dk >= 1 and n_channels >= 0 required";
  if (args.word_bits == 16 && args.n_channels * args.prefix_bits >= 32768)
    return "16-bit words score in int16: n_channels * prefix_bits must stay below 32768";
  for (std::int64_t s = 0; s < args.n_channels; ++s)
    if (args.channels[s] < 0 || args.channels[s] >= args.dk) return "channels: every entry must be in [0, dk)";
  if (args.n_items == 0 || args.n_channels == 0) return "";
  switch (args.word_bits) {
    case 16: scan<std::uint16_t, std::int16_t>(args); break;
    case 32: scan<std::uint32_t, std::int32_t>(args); break;
    default: scan<std::uint64_t, std::int32_t>(args); break;
  }
  return "";
}

std::string top_scores(const TopScoresArgs& args) {
  if (args.score_bits != 16 && args.score_bits != 32) return "score_bits must be 16 or 32";
  if (args.n < 0 || args.k < 0) return "n and k must be >= 0";
  if (args.low > 0 || args.low < -(std::int32_t{1} << 30)) return "low must be in [-2^30, 0]";
  return args.score_bits == 16 ? select_top<std::int16_t>(args) : select_top<std::int32_t>(args);
}

}  // namespace crosslayer
