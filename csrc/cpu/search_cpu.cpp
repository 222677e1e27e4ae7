// Masked top-k search of sign codes on the CPU (crosslayer/search.h).
//
// The scan is bound by memory more than by popcounts: an item is 102 KB (Dk=1280, Dt=320) and a batch of 32 queries x
// 50 channels touches about 70% of its rows (85% of its cache lines). So every row is loaded once per batch of
// queries: threads take ranges of kRangeItems database items (dynamically) and walk them kSearchItemBlock items at a
// time, channel by channel over the batch's sorted union of channels (forwards through memory), scoring each loaded
// row against every query that selected that channel, with the rows a few channels ahead prefetched. Each thread
// keeps its own top-k per query; the per-thread lists (and, when merging, the caller's previous result) are merged at
// the end.
// Compact codes (compact_codes.h): rows are sign rows only (half the bytes) and the kernel counts differing signs.
// A query's dead channels are left out of the plan (they score 0); an item's dead channels (a zero sign row, ~1% of
// channels) are corrected after the kernel: score = dt * (query's live selected channels) - 2 * counts, minus, for
// each dead channel c of the item that the query selected, what the zero row scored there: dt - 2 * neg_q[c].
#include <omp.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/search.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace {

constexpr std::int64_t kQueryBatch = 64;
// Items a thread takes at a time (a multiple of kSearchItemBlock).
constexpr std::int64_t kRangeItems = 256;

struct Hit {
  std::int32_t score;
  std::int64_t id;
};

// Ranking order: higher score first, then smaller id.
inline bool ranks_before(const Hit& x, const Hit& y) { return x.score != y.score ? x.score > y.score : x.id < y.id; }

// The k best hits seen so far; a max-heap under ranks_before, so its top is the worst kept hit.
class TopK {
 public:
  explicit TopK(std::int64_t k) : k_(k) { heap_.reserve(static_cast<std::size_t>(k)); }
  void offer(std::int32_t score, std::int64_t id) {
    const Hit hit{score, id};
    if (static_cast<std::int64_t>(heap_.size()) < k_) {
      heap_.push_back(hit);
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
    } else if (ranks_before(hit, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), ranks_before);
      heap_.back() = hit;
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
    }
  }
  const std::vector<Hit>& hits() const { return heap_; }

 private:
  std::int64_t k_;
  std::vector<Hit> heap_;
};

const char* check_args(const SearchArgs& a) {
  for (const CodeMatrix* m : {&a.queries, &a.database}) {
    if (m->n < 0 || m->dk < 1 || m->dt < 1) return "code matrix needs n >= 0, dk >= 1, dt >= 1";
    if (m->n > 0 && m->bits == nullptr) return "code matrix bits are null";
  }
  if (a.queries.dk != a.database.dk || a.queries.dt != a.database.dt) return "queries and database must have the same dk and dt";
  if (a.queries.layout != a.database.layout) return "queries and database must have the same layout (2-plane or compact)";
  if (a.database.dk * a.database.dt > INT32_MAX) return "dk * dt must stay below 2^31 for exact int32 scores";
  if (a.n_channels < 1 || a.n_channels > a.database.dk) return "n_channels must be in [1, dk]";
  if (a.k < 1) return "k must be >= 1";
  if (!a.merge_with_existing && a.k > a.database.n) return "k must not exceed database.n (unless merging)";
  if (a.id_base < 0) return "id_base must be >= 0";
  if (a.queries.n > 0 && (a.channels == nullptr || a.out_scores == nullptr || a.out_ids == nullptr))
    return "channels and outputs must not be null";
  for (std::int64_t i = 0; i < a.queries.n * a.n_channels; ++i)
    if (a.channels[i] < 0 || a.channels[i] >= a.database.dk) return "a channel index is outside [0, dk)";
  return "";
}

// The batch's channel plan (ternary_kernels.h): the sorted union of the channels its queries selected and, per
// union channel, the queries that selected it with copies of their rows, back to back in scan order: the kernel
// then reads them as one sequential stream instead of chasing a pointer into 32 scattered query codes per row.
// Built by counting sort, so entries of a channel keep query order.
// Compact codes also keep, per query, how many of its selected channels are live, per entry the number of negative
// values of its row, and per channel its union index (-1: no query selected it), for the dead-channel correction.
struct BatchPlan {
  std::vector<std::int32_t> channels;
  std::vector<std::int64_t> entry_begin;
  std::vector<std::int32_t> entry_query;
  std::vector<std::uint64_t> entry_rows;
  std::vector<std::int64_t> live_selected;
  std::vector<std::int32_t> entry_negatives;
  std::vector<std::int64_t> union_index;
  detail::ChannelPlan view;
};

// `rows_at`: first word of the query bits' channel rows (past the live words for compact codes); `live`: the query
// bits' live words (null for 2-plane codes, whose every selected channel enters the plan).
void build_plan(const std::uint64_t* query_bits, std::int64_t stride, std::int64_t rows_at, std::int64_t row_words,
                bool compact, const std::int32_t* channels, std::int64_t n_queries, std::int64_t n_channels,
                std::int64_t dk, BatchPlan& plan) {
  // A compact query's dead channel scores 0 against anything: it takes no entry.
  const auto takes_entry = [&](std::int64_t q, std::int32_t c) {
    return !compact || channel_live(query_bits + q * stride, c);
  };
  std::vector<std::int64_t> count(static_cast<std::size_t>(dk), 0);
  plan.live_selected.assign(static_cast<std::size_t>(n_queries), 0);
  std::int64_t entries = 0;
  for (std::int64_t q = 0; q < n_queries; ++q)
    for (std::int64_t i = 0; i < n_channels; ++i) {
      const std::int32_t c = channels[q * n_channels + i];
      if (!takes_entry(q, c)) continue;
      ++count[static_cast<std::size_t>(c)];
      ++plan.live_selected[static_cast<std::size_t>(q)];
      ++entries;
    }
  std::vector<std::int64_t>& union_index = plan.union_index;
  union_index.assign(static_cast<std::size_t>(dk), -1);
  plan.channels.clear();
  plan.entry_begin.assign(1, 0);
  for (std::int64_t c = 0; c < dk; ++c) {
    if (count[static_cast<std::size_t>(c)] == 0) continue;
    union_index[static_cast<std::size_t>(c)] = static_cast<std::int64_t>(plan.channels.size());
    plan.channels.push_back(static_cast<std::int32_t>(c));
    plan.entry_begin.push_back(plan.entry_begin.back() + count[static_cast<std::size_t>(c)]);
  }
  plan.entry_query.assign(static_cast<std::size_t>(entries), 0);
  plan.entry_rows.assign(static_cast<std::size_t>(entries * row_words), 0);
  plan.entry_negatives.assign(compact ? static_cast<std::size_t>(entries) : 0, 0);
  std::vector<std::int64_t> next(plan.entry_begin.begin(), plan.entry_begin.end() - 1);
  for (std::int64_t q = 0; q < n_queries; ++q)
    for (std::int64_t i = 0; i < n_channels; ++i) {
      const std::int32_t c = channels[q * n_channels + i];
      if (!takes_entry(q, c)) continue;
      const std::size_t e = static_cast<std::size_t>(next[static_cast<std::size_t>(union_index[static_cast<std::size_t>(c)])]++);
      plan.entry_query[e] = static_cast<std::int32_t>(q);
      const std::uint64_t* row = query_bits + q * stride + rows_at + c * row_words;
      std::copy_n(row, row_words, plan.entry_rows.data() + e * row_words);
      if (compact)
        for (std::int64_t w = 0; w < row_words; ++w) plan.entry_negatives[e] += __builtin_popcountll(row[w]);
    }
  plan.view = {plan.channels.data(), static_cast<std::int64_t>(plan.channels.size()), plan.entry_begin.data(),
               plan.entry_query.data(), plan.entry_rows.data(), n_queries};
}

// Scores consecutive ranges of database items for one thread, kSearchItemBlock items at a time, offering every
// score to the thread's top-k lists.
struct RangeScanner {
  RangeScanner(const CodeMatrix& database_, const BatchPlan& batch_, detail::SearchBlockFn search_block_,
               std::int64_t id_base_, std::vector<TopK>& best_)
      : database(database_), batch(batch_), plan(batch_.view), search_block(search_block_), id_base(id_base_),
        best(best_) {}

  const CodeMatrix& database;
  const BatchPlan& batch;
  const detail::ChannelPlan& plan;
  detail::SearchBlockFn search_block;
  std::int64_t id_base;
  std::vector<TopK>& best;
  alignas(64) unsigned char workspace[detail::kSearchWorkspacePerQuery * kQueryBatch];  // 20 KB: stays in L1
  std::int32_t scores[detail::kSearchItemBlock * kQueryBatch];

  bool compact() const { return database.layout == CodeLayout::kCompact; }

  // A short last block repeats its first item in the missing slots (read, scored, never offered). Compact items
  // point at their first sign row.
  void block_items(std::int64_t x0, std::int64_t end, const std::uint64_t** items) const {
    const std::int64_t stride = image_words(database.layout, database.dk, database.dt);
    const std::int64_t rows_at = compact() ? live_words(database.dk) : 0;
    for (std::int64_t j = 0; j < detail::kSearchItemBlock; ++j)
      items[j] = database.bits + (x0 + j < end ? x0 + j : x0) * stride + rows_at;
  }

  // Compact: the kernel's counts of differing signs -> dot products (see the top of this file).
  void counts_to_scores(const std::uint64_t* const* items, std::int64_t count) {
    constexpr std::int64_t kBlock = detail::kSearchItemBlock;
    const std::int64_t dt = database.dt, dk = database.dk, lw = live_words(dk);
    for (std::int64_t q = 0; q < plan.n_queries; ++q)
      for (std::int64_t j = 0; j < kBlock; ++j)
        scores[q * kBlock + j] = static_cast<std::int32_t>(
            dt * batch.live_selected[static_cast<std::size_t>(q)] - 2 * static_cast<std::int64_t>(scores[q * kBlock + j]));
    for (std::int64_t j = 0; j < count; ++j) {
      const std::uint64_t* live = items[j] - lw;
      for (std::int64_t w = 0; w < lw; ++w) {
        std::uint64_t dead = ~live[w];
        if (w == lw - 1 && dk % kBitsPerWord) dead &= (std::uint64_t{1} << (dk % kBitsPerWord)) - 1;
        while (dead) {
          const std::int64_t c = w * kBitsPerWord + __builtin_ctzll(dead);
          dead &= dead - 1;
          const std::int64_t u = batch.union_index[static_cast<std::size_t>(c)];
          if (u < 0) continue;
          for (std::int64_t e = plan.entry_begin[u]; e < plan.entry_begin[u + 1]; ++e)
            scores[plan.entry_query[e] * kBlock + j] -=
                static_cast<std::int32_t>(dt - 2 * batch.entry_negatives[static_cast<std::size_t>(e)]);
        }
      }
    }
  }

  void scan(std::int64_t begin, std::int64_t end) {
    constexpr std::int64_t kBlock = detail::kSearchItemBlock;
    const std::uint64_t* items[kBlock];
    const std::uint64_t* next_items[kBlock];
    const std::int64_t wpp = words_per_plane(database.dt);
    for (std::int64_t x0 = begin; x0 < end; x0 += kBlock) {
      block_items(x0, end, items);
      const bool has_next = x0 + kBlock < end;
      if (has_next) block_items(x0 + kBlock, end, next_items);
      const std::int64_t count = std::min(kBlock, end - x0);
      if (plan.n_channels > 0) {
        search_block(items, plan, wpp, has_next ? next_items : nullptr, workspace, scores);
      } else {  // every selected channel of every query in the batch is dead: all scores are 0
        std::fill_n(scores, plan.n_queries * kBlock, 0);
      }
      if (compact()) counts_to_scores(items, count);
      for (std::int64_t q = 0; q < plan.n_queries; ++q) {
        TopK& top = best[static_cast<std::size_t>(q)];
        for (std::int64_t j = 0; j < count; ++j) top.offer(scores[q * kBlock + j], id_base + x0 + j);
      }
    }
  }
};

}  // namespace

const char* search_cpu(const SearchArgs& args) {
  if (const char* err = check_args(args); *err) return err;
  const std::int64_t nq = args.queries.n, n_items = args.database.n, k = args.k, nc = args.n_channels;
  if (nq == 0 || n_items == 0) return "";  // an empty segment leaves a merged result as it was
  const std::int64_t dk = args.database.dk;
  const bool compact = args.database.layout == CodeLayout::kCompact;
  const std::int64_t stride = image_words(args.database.layout, dk, args.database.dt);
  const std::int64_t row_words = compact ? words_per_plane(args.database.dt) : words_per_channel(args.database.dt);
  const std::int64_t rows_at = compact ? live_words(dk) : 0;
  const detail::SearchBlockFn search_block =
      compact ? detail::active_kernels().search_block_compact : detail::active_kernels().search_block;
  const std::int64_t n_ranges = (n_items + kRangeItems - 1) / kRangeItems;
  int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<std::int64_t>(threads, n_ranges));
  BatchPlan plan;

  for (std::int64_t q0 = 0; q0 < nq; q0 += kQueryBatch) {
    const std::int64_t batch = std::min(kQueryBatch, nq - q0);
    build_plan(args.queries.bits + q0 * stride, stride, rows_at, row_words, compact, args.channels + q0 * nc, batch, nc,
               dk, plan);
    std::vector<std::vector<TopK>> per_thread(static_cast<std::size_t>(threads));

#pragma omp parallel num_threads(threads)
    {
      std::vector<TopK>& best = per_thread[static_cast<std::size_t>(omp_get_thread_num())];
      best.assign(static_cast<std::size_t>(batch), TopK(k));
      RangeScanner scanner(args.database, plan, search_block, args.id_base, best);
      // Ranges are handed out dynamically: on a shared machine a descheduled thread must not hold up the others.
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t range = 0; range < n_ranges; ++range)
        scanner.scan(range * kRangeItems, std::min(n_items, (range + 1) * kRangeItems));
    }

    for (std::int64_t q = 0; q < batch; ++q) {
      std::vector<Hit> merged;
      std::int32_t* out_scores = args.out_scores + (q0 + q) * k;
      std::int64_t* out_ids = args.out_ids + (q0 + q) * k;
      if (args.merge_with_existing)
        for (std::int64_t i = 0; i < k; ++i) merged.push_back({out_scores[i], out_ids[i]});
      // OpenMP may start fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC, nesting): unused slots are empty.
      for (const std::vector<TopK>& best : per_thread)
        if (!best.empty())
          for (const Hit& hit : best[static_cast<std::size_t>(q)].hits()) merged.push_back(hit);
      const std::int64_t keep = std::min<std::int64_t>(k, static_cast<std::int64_t>(merged.size()));
      std::partial_sort(merged.begin(), merged.begin() + keep, merged.end(), ranks_before);
      for (std::int64_t i = 0; i < keep; ++i) {
        out_scores[i] = merged[i].score;
        out_ids[i] = merged[i].id;
      }
    }
  }
  return "";
}

}  // namespace crosslayer
