// Masked ternary popcount search and code Gram matrix on the GPU. See crosslayer/search.h for the contracts.
//
// search: a scoring kernel streams each query's selected channel lines of the database (the only bytes it must
//   read) and writes one 64-bit sort key per item: the score (offset to be non-negative) above the item's position,
//   position inverted so that a descending sort ranks equal scores by the smaller id. Entries already in the output
//   (merge_with_existing) get keys at positions before the segment's items, which keeps the tie order consistent
//   because their ids are smaller than id_base. A CUB radix sort over just the key bits in use (score bits +
//   position bits) orders each query's candidates; the first k are decoded into scores and ids.
//   The scoring kernel for words_per_plane in {2, 4, 8, 16} has W lanes read one channel line (2W words) with
//   16-byte loads, so a warp reads whole 128-byte lines (W = 8); other widths use a one-thread-per-item kernel.
// gram: 64x64 output tiles per CTA, 4x4 per thread, word pairs (nonzero, negative) staged in shared memory.
// Compact codes (compact_codes.h) are first expanded to the 2-plane layout on the device (expand_compact_kernel,
// into stream-ordered scratch as large as the 2-plane codes) and then scored by the same kernels: simple and exact,
// at the cost of one extra pass over the codes and twice their memory for the call.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/search.h"
#include "cuda_util.cuh"

namespace crosslayer {
namespace {

using cuda_detail::ceil_div;
using u64 = unsigned long long;

constexpr int kSearchThreads = 256;
constexpr int kChannelChunk = 64;   // query channel lines staged in shared memory at a time
constexpr int kItemsPerGroup = 4;   // items each lane group scores (amortises the staging)

__device__ __forceinline__ int ternary_dot_words(u64 q_nz, u64 q_neg, u64 x_nz, u64 x_neg) {
  const u64 both = q_nz & x_nz;
  return __popcll(both) - 2 * __popcll(both & (q_neg ^ x_neg));
}

struct KeyLayout {
  std::int64_t score_offset;  // n_channels * dt: scores lie in [-offset, offset]
  int position_bits;
  u64 position_mask;
};

__device__ __forceinline__ u64 make_key(std::int64_t score, std::int64_t position, const KeyLayout& layout) {
  std::int64_t shifted = score + layout.score_offset;
  shifted = shifted < 0 ? 0 : (shifted > 2 * layout.score_offset ? 2 * layout.score_offset : shifted);
  return (static_cast<u64>(shifted) << layout.position_bits) | (layout.position_mask - static_cast<u64>(position));
}

struct ScoreParams {
  const std::uint64_t* queries;
  const std::uint64_t* database;
  const std::int32_t* channels;  // [n_queries][n_channels]
  std::int64_t n_channels;
  std::int64_t n_items;
  std::int64_t dk;
  std::int64_t words;            // per plane
  std::int64_t first_query;      // of this batch
  std::int64_t existing;         // key positions reserved for merged entries
  std::int64_t keys_per_query;   // existing + n_items
  KeyLayout layout;
  u64* keys;                     // [batch][keys_per_query]
};

// Vector path: W lanes per item; lane t < W/2 holds nonzero words 2t, 2t+1, lane t + W/2 the matching negatives.
template <int W>
__global__ void __launch_bounds__(kSearchThreads) score_vector_kernel(ScoreParams p) {
  constexpr int kHalf = W / 2;
  constexpr int kGroupsPerWarp = 32 / W;
  __shared__ ulonglong2 query_lines[kChannelChunk][W];
  __shared__ int channel_ids[kChannelChunk];

  const std::int64_t q = p.first_query + blockIdx.y;
  const int lane = threadIdx.x % 32, t = lane % W, group = lane / W;
  const std::int64_t warp_global = blockIdx.x * (kSearchThreads / 32) + threadIdx.x / 32;
  const std::int64_t first_item = (warp_global * kGroupsPerWarp + group) * kItemsPerGroup;
  const ulonglong2* db = reinterpret_cast<const ulonglong2*>(p.database);
  const ulonglong2* qb = reinterpret_cast<const ulonglong2*>(p.queries) + q * p.dk * W;

  int partial[kItemsPerGroup] = {};
  for (std::int64_t c0 = 0; c0 < p.n_channels; c0 += kChannelChunk) {
    const int count = static_cast<int>(p.n_channels - c0 < kChannelChunk ? p.n_channels - c0 : kChannelChunk);
    __syncthreads();  // previous chunk fully consumed
    for (int i = threadIdx.x; i < count * W; i += kSearchThreads) {
      const int c = i / W, part = i % W;
      int ch = __ldg(p.channels + q * p.n_channels + c0 + c);
      ch = (ch < 0 || ch >= p.dk) ? -1 : ch;  // out of range: skipped (validated by the caller)
      if (part == 0) channel_ids[c] = ch;
      query_lines[c][part] = ch < 0 ? make_ulonglong2(0, 0) : qb[ch * W + part];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kItemsPerGroup; ++r) {
      const std::int64_t item = first_item + r;
      const bool valid = item < p.n_items;
      const ulonglong2* line_base = db + item * p.dk * W + t;
      int c = 0;
      for (; c + 4 <= count; c += 4) {
        ulonglong2 x[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int ch = channel_ids[c + u];
          x[u] = (valid && ch >= 0) ? __ldcs(line_base + ch * W) : make_ulonglong2(0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const u64 neg0 = __shfl_down_sync(0xffffffffu, x[u].x, kHalf, W);
          const u64 neg1 = __shfl_down_sync(0xffffffffu, x[u].y, kHalf, W);
          if (t < kHalf) {
            const ulonglong2 qn = query_lines[c + u][t], qg = query_lines[c + u][t + kHalf];
            partial[r] += ternary_dot_words(qn.x, qg.x, x[u].x, neg0) + ternary_dot_words(qn.y, qg.y, x[u].y, neg1);
          }
        }
      }
      for (; c < count; ++c) {
        const int ch = channel_ids[c];
        const ulonglong2 x = (valid && ch >= 0) ? __ldcs(line_base + ch * W) : make_ulonglong2(0, 0);
        const u64 neg0 = __shfl_down_sync(0xffffffffu, x.x, kHalf, W);
        const u64 neg1 = __shfl_down_sync(0xffffffffu, x.y, kHalf, W);
        if (t < kHalf) {
          const ulonglong2 qn = query_lines[c][t], qg = query_lines[c][t + kHalf];
          partial[r] += ternary_dot_words(qn.x, qg.x, x.x, neg0) + ternary_dot_words(qn.y, qg.y, x.y, neg1);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kItemsPerGroup; ++r) {
    int score = partial[r];
#pragma unroll
    for (int offset = W / 2; offset > 0; offset >>= 1) score += __shfl_xor_sync(0xffffffffu, score, offset, W);
    const std::int64_t item = first_item + r;
    if (t == 0 && item < p.n_items)
      p.keys[blockIdx.y * p.keys_per_query + p.existing + item] = make_key(score, p.existing + item, p.layout);
  }
}

// Any words_per_plane: one thread per item.
__global__ void __launch_bounds__(kSearchThreads) score_generic_kernel(ScoreParams p) {
  const std::int64_t q = p.first_query + blockIdx.y;
  const std::int64_t item = blockIdx.x * static_cast<std::int64_t>(kSearchThreads) + threadIdx.x;
  if (item >= p.n_items) return;
  const std::int64_t line = 2 * p.words;
  const std::uint64_t* x = p.database + item * p.dk * line;
  const std::uint64_t* qb = p.queries + q * p.dk * line;
  std::int64_t score = 0;
  for (std::int64_t c = 0; c < p.n_channels; ++c) {
    const int ch = __ldg(p.channels + q * p.n_channels + c);
    if (ch < 0 || ch >= p.dk) continue;
    const std::uint64_t* xl = x + ch * line;
    const std::uint64_t* ql = qb + ch * line;
    for (std::int64_t w = 0; w < p.words; ++w)
      score += ternary_dot_words(__ldg(ql + w), __ldg(ql + p.words + w), xl[w], xl[p.words + w]);
  }
  p.keys[blockIdx.y * p.keys_per_query + p.existing + item] = make_key(score, p.existing + item, p.layout);
}

// Keys of the entries already in the output, and a copy of their ids (the output is overwritten afterwards).
__global__ void existing_keys_kernel(const std::int32_t* scores, const std::int64_t* ids, std::int64_t first_query,
                                     std::int64_t batch, std::int64_t k, std::int64_t keys_per_query, KeyLayout layout,
                                     u64* keys, std::int64_t* ids_copy) {
  const std::int64_t total = batch * k;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t qi = i / k, e = i % k;
    const std::int64_t src = (first_query + qi) * k + e;
    keys[qi * keys_per_query + e] = make_key(scores[src], e, layout);
    ids_copy[i] = ids[src];
  }
}

__global__ void decode_top_kernel(const u64* sorted, std::int64_t first_query, std::int64_t batch, std::int64_t k,
                                  std::int64_t keys_per_query, std::int64_t existing, std::int64_t id_base,
                                  KeyLayout layout, const std::int64_t* ids_copy, std::int32_t* out_scores,
                                  std::int64_t* out_ids) {
  const std::int64_t total = batch * k;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t qi = i / k, rank = i % k;
    const u64 key = sorted[qi * keys_per_query + rank];
    const std::int64_t position = static_cast<std::int64_t>(layout.position_mask - (key & layout.position_mask));
    const std::int64_t score = static_cast<std::int64_t>(key >> layout.position_bits) - layout.score_offset;
    const std::int64_t dst = (first_query + qi) * k + rank;
    out_scores[dst] = static_cast<std::int32_t>(score);
    out_ids[dst] = position < existing ? ids_copy[qi * k + position] : id_base + (position - existing);
  }
}

int bit_width(std::uint64_t v) {
  int bits = 0;
  while (v) {
    ++bits;
    v >>= 1;
  }
  return bits;
}

unsigned grid_for(std::int64_t total) {
  return static_cast<unsigned>(std::max<std::int64_t>(1, std::min<std::int64_t>(ceil_div(total, 256), 65536)));
}

const char* check_codes(const CodeMatrix& m, const char* what) {
  if (m.n < 0 || m.dk <= 0 || m.dt <= 0) return what;
  if (m.n > 0 && !m.bits) return what;
  return nullptr;
}

template <int W>
cudaError_t launch_vector_scores(const ScoreParams& p, std::int64_t batch, cudaStream_t stream) {
  const std::int64_t items_per_block = (kSearchThreads / 32) * (32 / W) * kItemsPerGroup;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n_items, items_per_block)), static_cast<unsigned>(batch));
  score_vector_kernel<W><<<grid, kSearchThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_scores(const ScoreParams& p, std::int64_t batch, bool aligned, cudaStream_t stream) {
  if (aligned) {
    switch (p.words) {
      case 2: return launch_vector_scores<2>(p, batch, stream);
      case 4: return launch_vector_scores<4>(p, batch, stream);
      case 8: return launch_vector_scores<8>(p, batch, stream);
      case 16: return launch_vector_scores<16>(p, batch, stream);
      default: break;
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n_items, kSearchThreads)), static_cast<unsigned>(batch));
  score_generic_kernel<<<grid, kSearchThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// ---- gram -------------------------------------------------------------------------------------------------------

constexpr int kGramTile = 64;
constexpr int kGramPairs = 16;  // (nonzero, negative) word pairs staged per step
constexpr int kGramThreads = 256;

__global__ void __launch_bounds__(kGramThreads) gram_kernel(CodeMatrix a, CodeMatrix b, std::int32_t* out,
                                                            int tiles_b) {
  __shared__ u64 a_nz[kGramPairs][kGramTile + 1], a_neg[kGramPairs][kGramTile + 1];
  __shared__ u64 b_nz[kGramPairs][kGramTile + 1], b_neg[kGramPairs][kGramTile + 1];
  const std::int64_t words = words_per_plane(a.dt);
  const std::int64_t pairs = a.dk * words;  // K extent
  const std::int64_t image_words = a.dk * 2 * words;
  const std::int64_t row0 = (blockIdx.x / tiles_b) * static_cast<std::int64_t>(kGramTile);
  const std::int64_t col0 = (blockIdx.x % tiles_b) * static_cast<std::int64_t>(kGramTile);
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  int acc[4][4] = {};
  for (std::int64_t p0 = 0; p0 < pairs; p0 += kGramPairs) {
    for (int i = threadIdx.x; i < kGramPairs * kGramTile; i += kGramThreads) {
      const int pp = i % kGramPairs, r = i / kGramPairs;
      const std::int64_t pair = p0 + pp;
      u64 anz = 0, ang = 0, bnz = 0, bng = 0;
      if (pair < pairs) {
        const std::int64_t offset = (pair / words) * 2 * words + pair % words;
        if (row0 + r < a.n) {
          const std::uint64_t* src = a.bits + (row0 + r) * image_words + offset;
          anz = src[0];
          ang = src[words];
        }
        if (col0 + r < b.n) {
          const std::uint64_t* src = b.bits + (col0 + r) * image_words + offset;
          bnz = src[0];
          bng = src[words];
        }
      }
      a_nz[pp][r] = anz;
      a_neg[pp][r] = ang;
      b_nz[pp][r] = bnz;
      b_neg[pp][r] = bng;
    }
    __syncthreads();
#pragma unroll 4
    for (int pp = 0; pp < kGramPairs; ++pp) {
      u64 xa[4], ga[4], xb[4], gb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xa[i] = a_nz[pp][tr * 4 + i];
        ga[i] = a_neg[pp][tr * 4 + i];
        xb[i] = b_nz[pp][tc * 4 + i];
        gb[i] = b_neg[pp][tc * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += ternary_dot_words(xa[i], ga[i], xb[j], gb[j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::int64_t row = row0 + tr * 4 + i;
    if (row >= a.n) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t col = col0 + tc * 4 + j;
      if (col < b.n) out[row * b.n + col] = acc[i][j];
    }
  }
}

// ---- compact -> 2-plane ------------------------------------------------------------------------------------------
// One thread per (image, channel, word): nonzero = all valid bits when the channel is live, negative = its sign word.
__global__ void expand_compact_kernel(const std::uint64_t* compact, std::int64_t n, std::int64_t dk, std::int64_t dt,
                                      std::uint64_t* out) {
  const std::int64_t words = words_per_plane(dt), live = live_words(dk), stride = compact_words_per_image(dk, dt);
  const std::int64_t total = n * dk * words;
  const int tail = static_cast<int>(dt % kBitsPerWord);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t w = i % words, k = (i / words) % dk, image = i / (words * dk);
    const std::uint64_t* source = compact + image * stride;
    const bool is_live = (source[k / kBitsPerWord] >> (k % kBitsPerWord)) & 1u;
    const std::uint64_t full = (w == words - 1 && tail) ? (std::uint64_t{1} << tail) - 1 : ~std::uint64_t{0};
    std::uint64_t* target = out + ((image * dk + k) * 2) * words + w;
    target[0] = is_live ? full : 0;
    target[words] = source[live + k * words + w];
  }
}

// `m` in the 2-plane layout: itself, or its expansion into `scratch` (enqueued on `stream`).
cudaError_t as_two_plane(const CodeMatrix& m, cuda_detail::StreamScratch& scratch, cudaStream_t stream,
                         CodeMatrix& out) {
  out = m;
  out.layout = CodeLayout::kTwoPlane;
  if (m.layout != CodeLayout::kCompact || m.n == 0) return cudaSuccess;
  const cudaError_t status = scratch.allocate(sizeof(std::uint64_t) * m.n * words_per_image(m.dk, m.dt));
  if (status != cudaSuccess) return status;
  expand_compact_kernel<<<grid_for(m.n * m.dk * words_per_plane(m.dt)), 256, 0, stream>>>(m.bits, m.n, m.dk, m.dt,
                                                                                          scratch.as<std::uint64_t>());
  out.bits = scratch.as<std::uint64_t>();
  return cudaGetLastError();
}

}  // namespace

const char* gram_cuda(const GramArgs& args, void* stream_handle) {
  if (const char* e = check_codes(args.a, "gram_cuda: invalid first code matrix")) return e;
  if (const char* e = check_codes(args.b, "gram_cuda: invalid second code matrix")) return e;
  if (args.a.dk != args.b.dk || args.a.dt != args.b.dt) return "gram_cuda: code matrices differ in Dk or Dt";
  if (args.a.layout != args.b.layout) return "gram_cuda: code matrices differ in layout";
  if (args.a.layout == CodeLayout::kCompact && args.a.n > 0 && args.b.n > 0) {
    const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
    cuda_detail::StreamScratch a_scratch(stream), b_scratch(stream);
    GramArgs expanded = args;
    CROSSLAYER_CUDA_TRY(as_two_plane(args.a, a_scratch, stream, expanded.a));
    if (args.b.bits == args.a.bits && args.b.n == args.a.n) {
      expanded.b = expanded.a;
    } else {
      CROSSLAYER_CUDA_TRY(as_two_plane(args.b, b_scratch, stream, expanded.b));
    }
    return gram_cuda(expanded, stream_handle);
  }
  if (args.a.dk * args.a.dt > INT32_MAX) return "gram_cuda: dk * dt must stay below 2^31 for exact int32 scores";
  if (args.a.n == 0 || args.b.n == 0) return "";
  if (!args.out) return "gram_cuda: null output";
  const std::int64_t tiles_a = ceil_div(args.a.n, kGramTile), tiles_b = ceil_div(args.b.n, kGramTile);
  if (tiles_a * tiles_b > INT_MAX) return "gram_cuda: output too large for one launch";
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  gram_kernel<<<static_cast<unsigned>(tiles_a * tiles_b), kGramThreads, 0, stream>>>(args.a, args.b, args.out,
                                                                                     static_cast<int>(tiles_b));
  CROSSLAYER_CUDA_TRY(cudaGetLastError());
  return "";
}

const char* search_cuda(const SearchArgs& args, void* stream_handle) {
  const CodeMatrix& qm = args.queries;
  const CodeMatrix& db = args.database;
  if (const char* e = check_codes(qm, "search_cuda: invalid query codes")) return e;
  if (const char* e = check_codes(db, "search_cuda: invalid database codes")) return e;
  if (qm.dk != db.dk || qm.dt != db.dt) return "search_cuda: queries and database differ in Dk or Dt";
  if (qm.layout != db.layout) return "search_cuda: queries and database differ in layout";
  if (qm.layout == CodeLayout::kCompact && qm.n > 0 && db.n > 0) {
    const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
    cuda_detail::StreamScratch q_scratch(stream), db_scratch(stream);
    SearchArgs expanded = args;
    CROSSLAYER_CUDA_TRY(as_two_plane(qm, q_scratch, stream, expanded.queries));
    CROSSLAYER_CUDA_TRY(as_two_plane(db, db_scratch, stream, expanded.database));
    return search_cuda(expanded, stream_handle);
  }
  if (args.n_channels < 0 || args.n_channels > qm.dk) return "search_cuda: n_channels must be in [0, Dk]";
  if (args.k < 0) return "search_cuda: k must be >= 0";
  if (args.id_base < 0) return "search_cuda: id_base must be >= 0";
  const std::int64_t existing = args.merge_with_existing ? args.k : 0;
  if (args.k > db.n + existing) return "search_cuda: k exceeds the number of candidates (database.n)";
  if (qm.n == 0 || args.k == 0 || db.n == 0) return "";  // nothing to rank (merged entries stay as they are)
  if (!args.out_scores || !args.out_ids) return "search_cuda: null output";
  if (args.n_channels > 0 && !args.channels) return "search_cuda: null channel list";

  const std::int64_t words = words_per_plane(db.dt);
  const std::int64_t keys_per_query = existing + db.n;
  if (keys_per_query > INT_MAX) return "search_cuda: database segment too large for one call (split it)";
  KeyLayout layout;
  layout.score_offset = args.n_channels * db.dt;
  layout.position_bits = std::max(1, bit_width(static_cast<std::uint64_t>(keys_per_query - 1)));
  layout.position_mask = (u64(1) << layout.position_bits) - 1;
  const int score_bits = std::max(1, bit_width(static_cast<std::uint64_t>(2 * layout.score_offset)));
  const int end_bit = layout.position_bits + score_bits;
  if (end_bit > 64) return "search_cuda: n_channels * Dt too large for the sort key";

  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  CROSSLAYER_CUDA_TRY(cuda_detail::keep_pool_memory_cached());
  // Queries per batch: keys (in + out) of a batch stay within ~512 MiB.
  const std::int64_t batch = std::max<std::int64_t>(
      1, std::min<std::int64_t>({qm.n, (std::int64_t(32) << 20) / keys_per_query, 65535}));
  std::size_t sort_bytes = 0;
  CROSSLAYER_CUDA_TRY(cub::DeviceRadixSort::SortKeysDescending(nullptr, sort_bytes, static_cast<const u64*>(nullptr),
                                                               static_cast<u64*>(nullptr),
                                                               static_cast<int>(keys_per_query), 0, end_bit, stream));
  cuda_detail::StreamScratch keys_in(stream), keys_out(stream), ids_copy(stream), sort_temp(stream);
  CROSSLAYER_CUDA_TRY(keys_in.allocate(sizeof(u64) * batch * keys_per_query));
  CROSSLAYER_CUDA_TRY(keys_out.allocate(sizeof(u64) * batch * keys_per_query));
  CROSSLAYER_CUDA_TRY(ids_copy.allocate(sizeof(std::int64_t) * batch * std::max<std::int64_t>(existing, 1)));
  CROSSLAYER_CUDA_TRY(sort_temp.allocate(sort_bytes));

  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
  const bool aligned = address(qm.bits) % 16 == 0 && address(db.bits) % 16 == 0;
  for (std::int64_t first = 0; first < qm.n; first += batch) {
    const std::int64_t count = std::min(batch, qm.n - first);
    if (existing > 0) {
      existing_keys_kernel<<<grid_for(count * existing), 256, 0, stream>>>(
          args.out_scores, args.out_ids, first, count, existing, keys_per_query, layout, keys_in.as<u64>(),
          ids_copy.as<std::int64_t>());
      CROSSLAYER_CUDA_TRY(cudaGetLastError());
    }
    const ScoreParams params{qm.bits, db.bits, args.channels, args.n_channels, db.n, db.dk, words, first,
                             existing, keys_per_query, layout, keys_in.as<u64>()};
    CROSSLAYER_CUDA_TRY(launch_scores(params, count, aligned, stream));
    for (std::int64_t qi = 0; qi < count; ++qi) {
      std::size_t temp_bytes = sort_bytes;
      CROSSLAYER_CUDA_TRY(cub::DeviceRadixSort::SortKeysDescending(
          sort_temp.as<void>(), temp_bytes, keys_in.as<u64>() + qi * keys_per_query,
          keys_out.as<u64>() + qi * keys_per_query, static_cast<int>(keys_per_query), 0, end_bit, stream));
    }
    decode_top_kernel<<<grid_for(count * args.k), 256, 0, stream>>>(
        keys_out.as<u64>(), first, count, args.k, keys_per_query, existing, args.id_base, layout,
        ids_copy.as<std::int64_t>(), args.out_scores, args.out_ids);
    CROSSLAYER_CUDA_TRY(cudaGetLastError());
  }
  return "";
}

}  // namespace crosslayer
