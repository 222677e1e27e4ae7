// crosslayer/prefix_scan.h — the two-stage search's coarse stage: masked prefix scores over a channel-major table.
//
// Contract
//   Table: [dk][n_items] unsigned words of word_bits = 16, 32 or 64 bits, C-contiguous (one row per guidance
//   channel, so a query's selected channels are read as whole contiguous rows). In item x's word of channel c, bits
//   0 .. prefix_bits-1 are the signs (1 = negative) of x's first prefix_bits code values in that channel and the top
//   bit (word_bits - 1) says the channel is live (nonzero); other bits are ignored. 1 <= prefix_bits <= word_bits - 1.
//   Query: query_words[s] is the query's word (same layout, held in a uint64) for channel channels[s], s < n_channels.
//   prefix_scores adds, for every item i,
//       sum over s with both the query's and item i's channel channels[s] live of
//           prefix_bits - 2 * popcount((query_words[s] XOR table[channels[s]][i]) & (2^prefix_bits - 1))
//   to scores[i] (int16 for 16-bit words: |score| <= n_channels * 15 must stay below 2^15; int32 otherwise).
//   For codes whose channels are all-nonzero or all-zero (every code the encoders make) that is exactly the masked
//   ternary score of the codes cut to their first prefix_bits values (retrieval/prefix_scan.py builds the table).
//
//   top_scores: the ids of the k largest scores (int16 or int32 [n]), by decreasing score, ties to the smaller id,
//   skipping entries equal to `excluded`; every score lies in [low, -low] or equals excluded. Writes at most k ids to
//   out_ids and their number to *out_count (fewer than k when fewer are not excluded).
#pragma once
#include <cstdint>
#include <string>

namespace crosslayer {

struct PrefixScanArgs {
  const void* table = nullptr;  // [dk][n_items] words of word_bits
  int word_bits = 16;
  std::int64_t n_items = 0;
  std::int64_t dk = 0;
  const std::uint64_t* query_words = nullptr;  // [n_channels]
  const std::int32_t* channels = nullptr;      // [n_channels], each in [0, dk)
  std::int64_t n_channels = 0;
  int prefix_bits = 1;
  void* scores = nullptr;  // [n_items], int16 (word_bits 16) or int32; accumulated into
  int num_threads = 0;     // <= 0: the OpenMP default
};

struct TopScoresArgs {
  const void* scores = nullptr;  // [n] int16 or int32
  int score_bits = 32;
  std::int64_t n = 0;
  std::int32_t low = 0;       // every score not excluded is in [low, -low]
  std::int32_t excluded = 0;  // scores never proposed (e.g. deleted items)
  std::int64_t k = 0;
  std::int64_t* out_ids = nullptr;  // [k]
  std::int64_t* out_count = nullptr;
};

// Each returns an empty string on success, otherwise what was wrong with the arguments.
std::string prefix_scores(const PrefixScanArgs& args);
std::string top_scores(const TopScoresArgs& args);

}  // namespace crosslayer
