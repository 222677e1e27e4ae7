// The C API of the two-stage search's coarse stage (crosslayer/prefix_scan.h): argument checks, then the kernel.
#include <cstdint>
#include <string>

#include "crosslayer/crosslayer.h"
#include "crosslayer/prefix_scan.h"
#include "status.h"

using crosslayer::capi::guarded;
using crosslayer::capi::require;
using crosslayer::capi::require_dimension;
using crosslayer::capi::require_kernel_ok;

extern "C" {

crosslayer_status crosslayer_prefix_scores(const void* table, int word_bits, int64_t n_items, int64_t dk,
                                           const uint64_t* query_words, const int32_t* channels, int64_t n_channels,
                                           int prefix_bits, void* scores, int num_threads) {
  return guarded([&] {
    require_dimension(n_items, 0, "n_items");
    require_dimension(dk, 1, "dk");
    require_dimension(n_channels, 0, "n_channels");
    require(word_bits == 16 || word_bits == 32 || word_bits == 64,
            "word_bits: expected 16, 32 or 64, got " + std::to_string(word_bits));
    if (n_items > 0 && n_channels > 0) {
      require(table != nullptr, "table: expected words [dk][n_items], got NULL");
      require(query_words != nullptr, "query_words: expected uint64 [n_channels], got NULL");
      require(channels != nullptr, "channels: expected int32 [n_channels], got NULL");
      require(scores != nullptr, "scores: expected int16/int32 [n_items], got NULL");
    }
    crosslayer::PrefixScanArgs args;
    args.table = table;
    args.word_bits = word_bits;
    args.n_items = n_items;
    args.dk = dk;
    args.query_words = query_words;
    args.channels = channels;
    args.n_channels = n_channels;
    args.prefix_bits = prefix_bits;
    args.scores = scores;
    args.num_threads = num_threads;
    require_kernel_ok(crosslayer::prefix_scores(args));
  });
}

crosslayer_status crosslayer_top_scores(const void* scores, int score_bits, int64_t n, int32_t low, int32_t excluded,
                                        int64_t k, int64_t* out_ids, int64_t* out_count) {
  return guarded([&] {
    require_dimension(n, 0, "n");
    require_dimension(k, 0, "k");
    require(out_count != nullptr, "out_count: expected an int64 to write to, got NULL");
    require(n == 0 || scores != nullptr, "scores: expected int16/int32 [n], got NULL");
    require(k == 0 || out_ids != nullptr, "out_ids: expected int64 [k], got NULL");
    crosslayer::TopScoresArgs args;
    args.scores = scores;
    args.score_bits = score_bits;
    args.n = n;
    args.low = low;
    args.excluded = excluded;
    args.k = k;
    args.out_ids = out_ids;
    args.out_count = out_count;
    require_kernel_ok(crosslayer::top_scores(args));
  });
}

}  // extern "C"
