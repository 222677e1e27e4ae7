// Internal: the per-ISA ternary dot kernels behind gram_cpu/search_cpu, and the dispatch table that picks one.
#pragma once
#include <cstdint>

namespace crosslayer::detail {

// Rows of a packed Gram operand come in groups of this many (callers pad with zero rows).
constexpr std::int64_t kGramRowGroup = 4;
// Packed plane lengths are multiples of this many words, so every ISA loads whole vectors.
constexpr std::int64_t kPackedWordMultiple = 8;

// Gram tile on packed operands. A packed row is two planes of `plane_words` words (nonzero words of a run of
// channels back to back, zero padded, then the negative words the same way); rows follow each other. a_rows and
// b_rows are multiples of kGramRowGroup. Adds dot(a_i, b_j) to tile[i * b_rows + j]; with upper_only (a tile on the
// diagonal of gram(a, a)) at least for every j >= i, the rest of the tile being left to the mirror image.
using GramTileFn = void (*)(const std::uint64_t* a, std::int64_t a_rows, const std::uint64_t* b, std::int64_t b_rows,
                            std::int64_t plane_words, bool upper_only, std::int32_t* tile);

// Which query rows a batch compares against each channel, grouped by channel so every database row is loaded once
// per batch. For union channel u (channels[u], increasing): entries [entry_begin[u], entry_begin[u + 1]) name the
// query (entry_query, index within the batch) and hold a copy of that query's row of channel channels[u]: entry e's
// row is entry_rows[e * 2 * words_per_plane ...] (nonzero plane, then negative plane).
struct ChannelPlan {
  const std::int32_t* channels = nullptr;
  std::int64_t n_channels = 0;
  const std::int64_t* entry_begin = nullptr;
  const std::int32_t* entry_query = nullptr;
  const std::uint64_t* entry_rows = nullptr;
  std::int64_t n_queries = 0;
};

// Items scored together by search_block.
constexpr std::int64_t kSearchItemBlock = 8;
// Bytes of accumulator workspace search_block needs per query: per item one vector accumulator of at most 256 bits
// and one int64 for the words after the last whole vector of a row.
constexpr std::int64_t kSearchWorkspacePerQuery = kSearchItemBlock * (32 + 8);

// Scores kSearchItemBlock database images (items[j], full codes of words_per_plane(dt) = wpp) against the plan's
// queries: scores[q * kSearchItemBlock + j] = dot(query q, items[j]) over that query's channels. `workspace` is
// 64-byte aligned, kSearchWorkspacePerQuery * plan.n_queries bytes. Rows are prefetched a few union channels ahead,
// running on into the next block, `prefetch[j]` (null: none).
using SearchBlockFn = void (*)(const std::uint64_t* const* items, const ChannelPlan& plan, std::int64_t wpp,
                               const std::uint64_t* const* prefetch, void* workspace, std::int32_t* scores);

// Compact layout (crosslayer/compact_codes.h) variants, one popcount a word:
//   gram_tile_compact: packed rows are one sign plane of `plane_words` words; adds popcount(a_i XOR b_j) summed
//     over the row to tile[i * b_rows + j] (the caller turns these counts into dot products).
//   search_block_compact: items[j] points at the first sign row of item j (past its live words), plan rows are
//     sign rows of wpp words; scores[q * kSearchItemBlock + j] = sum over the query's entries of
//     popcount(sign_q XOR sign_item) (the caller turns these counts into dot products).
struct TernaryKernels {
  const char* name;
  bool (*supported)();
  GramTileFn gram_tile;
  SearchBlockFn search_block;
  GramTileFn gram_tile_compact;
  SearchBlockFn search_block_compact;
};

const TernaryKernels& kernels_avx512_vpopcntdq();
const TernaryKernels& kernels_avx2();
const TernaryKernels& kernels_popcnt();
const TernaryKernels& kernels_portable();

// The table in use (see crosslayer/popcount.h).
const TernaryKernels& active_kernels();

}  // namespace crosslayer::detail
