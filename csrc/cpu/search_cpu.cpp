// Masked top-k search of sign codes on the CPU (crosslayer/search.h).
//
// Threads split the database into contiguous ranges; each scans its range once per batch of queries, kBlockItems
// database images at a time: every query of the batch scores the block (which stays in L2) over its own channels,
// and the rows the batch will touch in the next block are prefetched meanwhile. Each thread keeps its own top-k per
// query; the per-thread lists (and, when merging, the caller's previous result) are merged at the end.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "crosslayer/codes.h"
#include "crosslayer/search.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace {

constexpr std::int64_t kBlockItems = 4;
constexpr std::int64_t kQueryBatch = 64;

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

// Sorted distinct channels the batch's queries use: what the next block's prefetch touches.
std::vector<std::int32_t> channel_union(const std::int32_t* channels, std::int64_t n_queries, std::int64_t n_channels,
                                        std::int64_t dk) {
  std::vector<char> used(static_cast<std::size_t>(dk), 0);
  for (std::int64_t i = 0; i < n_queries * n_channels; ++i) used[channels[i]] = 1;
  std::vector<std::int32_t> out;
  for (std::int64_t c = 0; c < dk; ++c)
    if (used[c]) out.push_back(static_cast<std::int32_t>(c));
  return out;
}

inline void prefetch_rows(const std::uint64_t* image, const std::vector<std::int32_t>& rows, std::int64_t row_words) {
  const std::int64_t row_bytes = row_words * 8;
  for (std::int32_t c : rows) {
    const char* row = reinterpret_cast<const char*>(image + c * row_words);
    for (std::int64_t offset = 0; offset < row_bytes; offset += 64) __builtin_prefetch(row + offset, 0, 0);
    __builtin_prefetch(row + row_bytes - 1, 0, 0);
  }
}

}  // namespace

const char* search_cpu(const SearchArgs& args) {
  if (const char* err = check_args(args); *err) return err;
  const std::int64_t nq = args.queries.n, n_items = args.database.n, k = args.k, nc = args.n_channels;
  if (nq == 0 || n_items == 0) return "";  // an empty segment leaves a merged result as it was
  const std::int64_t dk = args.database.dk, wpp = words_per_plane(args.database.dt);
  const std::int64_t stride = words_per_image(dk, args.database.dt), row_words = words_per_channel(args.database.dt);
  const detail::DotRowFn dot_row = detail::active_kernels().dot_row;
  int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
  threads = static_cast<int>(std::min<std::int64_t>(threads, (n_items + kBlockItems - 1) / kBlockItems));

  for (std::int64_t q0 = 0; q0 < nq; q0 += kQueryBatch) {
    const std::int64_t batch = std::min(kQueryBatch, nq - q0);
    const std::int32_t* batch_channels = args.channels + q0 * nc;
    const std::vector<std::int32_t> rows = channel_union(batch_channels, batch, nc, dk);
    std::vector<std::vector<TopK>> per_thread(static_cast<std::size_t>(threads));

#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      std::vector<TopK>& best = per_thread[static_cast<std::size_t>(t)];
      best.assign(static_cast<std::size_t>(batch), TopK(k));
      const std::int64_t begin = n_items * t / threads, end = n_items * (t + 1) / threads;
      std::int32_t scores[kBlockItems];
      for (std::int64_t x0 = begin; x0 < end; x0 += kBlockItems) {
        const std::int64_t count = std::min(kBlockItems, end - x0);
        const std::uint64_t* block = args.database.bits + x0 * stride;
        for (std::int64_t x = x0 + kBlockItems; x < std::min(x0 + 2 * kBlockItems, end); ++x)
          prefetch_rows(args.database.bits + x * stride, rows, row_words);
        for (std::int64_t q = 0; q < batch; ++q) {
          for (std::int64_t j = 0; j < count; ++j) scores[j] = 0;
          dot_row(args.queries.bits + (q0 + q) * stride, block, count, stride, batch_channels + q * nc, 0, nc, wpp,
                  scores);
          TopK& top = best[static_cast<std::size_t>(q)];
          for (std::int64_t j = 0; j < count; ++j) top.offer(scores[j], args.id_base + x0 + j);
        }
      }
    }

    for (std::int64_t q = 0; q < batch; ++q) {
      std::vector<Hit> merged;
      std::int32_t* out_scores = args.out_scores + (q0 + q) * k;
      std::int64_t* out_ids = args.out_ids + (q0 + q) * k;
      if (args.merge_with_existing)
        for (std::int64_t i = 0; i < k; ++i) merged.push_back({out_scores[i], out_ids[i]});
      for (const std::vector<TopK>& best : per_thread)
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
