// crosslayer/search.h — ternary popcount similarity on sign codes (codes.h or compact_codes.h layout): Gram matrix
// and masked top-k.
//
// Contract
//   CodeMatrix: `n` codes of `dk` channels x `dt` values in `layout`: kTwoPlane bits[n][dk][2][words_per_plane(dt)]
//   (codes.h), kCompact bits[n][compact_words_per_image(dk, dt)] (compact_codes.h); uint64, C-contiguous. Both
//   operands of a call share one layout. Every operation accepts either layout and gives the same integers for the
//   same ternary values. Ternary dot of codes q, x over channels S (paper eq. 3 on sign codes):
//     dot = sum_{k in S} popcount(nz_q & nz_x) - 2 * popcount(nz_q & nz_x & (neg_q ^ neg_x))      (2-plane)
//         = sum_{k in S, live in q and x} dt - 2 * popcount(sign_q ^ sign_x)                     (compact)
//   Scores are exact int32: |dot| <= dk * dt, which callers keep below 2^31.
//
//   gram:   out[i][j] = dot(a_i, b_j) over all channels; out is [a.n][b.n] int32, row-major.
//   search: for query q, channels[q][0 .. n_channels) lists the guidance channels to compare (selected by the caller,
//           e.g. the n_channels largest channel_mean of that query). Every database item is scored over those
//           channels; out_scores[q][0 .. k) / out_ids[q][0 .. k) receive the k best, by decreasing score, ties broken
//           by the smaller id. id of database item j is id_base + j. k <= database.n (callers clamp).
//           Several calls over consecutive database segments merge through `merge_with_existing`: when true, the
//           k entries already in out_scores/out_ids (a previous segment's result, ids < id_base) take part in the
//           ranking, so searching segment by segment equals searching their concatenation.
//   n may be 0 for either side; num_threads <= 0 means the OpenMP default.
#pragma once
#include <cstdint>

#include "crosslayer/compact_codes.h"

namespace crosslayer {

struct CodeMatrix {
  const std::uint64_t* bits = nullptr;
  std::int64_t n = 0;
  std::int64_t dk = 0;
  std::int64_t dt = 0;
  CodeLayout layout = CodeLayout::kTwoPlane;
};

struct GramArgs {
  CodeMatrix a;
  CodeMatrix b;
  std::int32_t* out = nullptr;
  int num_threads = 0;
};

struct SearchArgs {
  CodeMatrix queries;
  CodeMatrix database;
  const std::int32_t* channels = nullptr;  // [queries.n][n_channels]
  std::int64_t n_channels = 0;
  std::int64_t k = 0;
  std::int64_t id_base = 0;
  bool merge_with_existing = false;
  std::int32_t* out_scores = nullptr;  // [queries.n][k]
  std::int64_t* out_ids = nullptr;     // [queries.n][k]
  int num_threads = 0;
};

// Each returns an empty string on success, otherwise what was wrong with the arguments.
const char* gram_cpu(const GramArgs& args);
const char* search_cpu(const SearchArgs& args);

#ifdef CROSSLAYER_WITH_CUDA
// Same contracts with device pointers, enqueued on `stream` (a cudaStream_t).
const char* gram_cuda(const GramArgs& args, void* stream);
const char* search_cuda(const SearchArgs& args, void* stream);
#endif

}  // namespace crosslayer
