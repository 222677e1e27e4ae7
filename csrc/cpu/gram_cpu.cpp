// Gram matrix of sign codes on the CPU (crosslayer/search.h), organised like a GEMM.
//
// Both operands are first repacked once (gram_pack_row): the channel axis is cut into chunks of about
// kChunkPlaneWords words per plane, and per chunk and image the chunk's nonzero words sit back to back, then its
// negative words, each plane zero padded to whole vectors. The kernel then runs full-width loads over contiguous runs
// instead of a short masked load per channel (Dt=320 -> 5 of 8 words). Chunks are stored one after another
// (chunk-major), so one chunk of a tile's rows is contiguous.
// Threads then take kTile x kTile tiles of `out`, each on its own from start to end (no barrier between chunks: on a
// shared machine a descheduled thread would stall the other at every barrier). Per chunk, a tile's `b` rows
// (kTile x 4 KB) stay in L2 while 4 `a` rows at a time (L1) meet them in a 4 x 4 register-blocked kernel.
// gram(a, a) scores only the tiles on and above the diagonal (of a diagonal tile, only its upper triangle) and writes
// each one to both places.
// Compact codes (compact_codes.h) pack one plane, the sign words, and the kernel counts X = sum over all channels
// of popcount(sign_a XOR sign_b). A dead channel's sign row is zero, so X also counts, for a channel live in one
// code only, that code's negative values there; those are taken back per pair from the few dead channels:
//   dot = dt * |live_a & live_b| - 2 * (X - sum_{k dead in b} neg_a[k] - sum_{k dead in a} neg_b[k])
// where neg_a[k] = popcount(sign_a[k]) (zero where a is dead). Pooled codes have ~1% dead channels.
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/search.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace {

constexpr std::int64_t kTile = 128;             // output tile side, a multiple of detail::kGramRowGroup
constexpr std::int64_t kChunkPlaneWords = 256;  // 2 KB per plane: 4 KB per packed row of a chunk
static_assert(kTile % detail::kGramRowGroup == 0, "tiles hold whole row groups");

const char* check_matrix(const CodeMatrix& m) {
  if (m.n < 0 || m.dk < 1 || m.dt < 1) return "code matrix needs n >= 0, dk >= 1, dt >= 1";
  if (m.n > 0 && m.bits == nullptr) return "code matrix bits are null";
  if (m.dk * m.dt > INT32_MAX) return "dk * dt must stay below 2^31 for exact int32 scores";
  return "";
}

std::int64_t round_up(std::int64_t value, std::int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

struct FreeDeleter {
  void operator()(std::uint64_t* p) const { std::free(p); }
};
using WordBuffer = std::unique_ptr<std::uint64_t, FreeDeleter>;

// Geometry of a packed operand: `rows` (n rounded up to a row group; extra rows are zero) x `chunks` chunks of
// `chunk_channels` channels, each row of a chunk two planes of `plane_words` words.
struct PackedLayout {
  std::int64_t rows = 0;
  std::int64_t chunks = 0;
  std::int64_t chunk_channels = 0;
  std::int64_t plane_words = 0;
  std::int64_t planes = 2;  // 1 for compact codes (sign plane only)
  std::int64_t row_words() const { return planes * plane_words; }
  std::int64_t chunk_words() const { return rows * row_words(); }
};

PackedLayout packed_layout(std::int64_t n, std::int64_t dk, std::int64_t dt, CodeLayout code_layout) {
  const std::int64_t wpp = words_per_plane(dt);
  PackedLayout layout;
  layout.planes = code_layout == CodeLayout::kCompact ? 1 : 2;
  layout.rows = round_up(n, detail::kGramRowGroup);
  // at most dk channels a chunk: a chunk sized for the word budget alone would pad small-Dk codes with zeros
  layout.chunk_channels = std::min<std::int64_t>(dk, wpp >= kChunkPlaneWords ? 1 : kChunkPlaneWords / wpp);
  layout.chunks = (dk + layout.chunk_channels - 1) / layout.chunk_channels;
  layout.plane_words = round_up(layout.chunk_channels * wpp, detail::kPackedWordMultiple);
  return layout;
}

// Packed operands are large (as large as the codes) and every 4 KB packed row is its own page: on 2 MB pages the
// kernel's tiles (hundreds of rows) stay within the TLB, and packing takes far fewer page faults.
WordBuffer allocate_packed(const PackedLayout& layout) {
  constexpr std::size_t kHugePage = std::size_t{1} << 21;
  const std::size_t bytes = static_cast<std::size_t>(layout.chunks * layout.chunk_words() * 8);  // a multiple of 64
  if (bytes < kHugePage) return WordBuffer(static_cast<std::uint64_t*>(std::aligned_alloc(64, bytes)));
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  WordBuffer buffer(static_cast<std::uint64_t*>(std::aligned_alloc(kHugePage, rounded)));
  if (buffer) madvise(buffer.get(), rounded, MADV_HUGEPAGE);  // a hint: without it the buffer is still correct
  return buffer;
}

// Writes every chunk of row `row` of `m` (rows >= m.n: zeros) into `packed`.
void gram_pack_row(const CodeMatrix& m, std::int64_t row, const PackedLayout& layout, std::uint64_t* packed) {
  const std::int64_t wpp = words_per_plane(m.dt), channel_words = words_per_channel(m.dt);
  for (std::int64_t chunk = 0; chunk < layout.chunks; ++chunk) {
    std::uint64_t* nz = packed + chunk * layout.chunk_words() + row * layout.row_words();
    std::uint64_t* neg = nz + layout.plane_words;
    const std::int64_t first = chunk * layout.chunk_channels;
    const std::int64_t count = row >= m.n ? 0 : std::min(layout.chunk_channels, m.dk - first);
    if (m.layout == CodeLayout::kCompact) {
      // sign rows of consecutive channels are already back to back
      if (count > 0)
        std::memcpy(nz, compact_sign_row(m.bits + row * compact_words_per_image(m.dk, m.dt), m.dk, m.dt, first),
                    sizeof(std::uint64_t) * count * wpp);
      std::memset(nz + count * wpp, 0, sizeof(std::uint64_t) * (layout.plane_words - count * wpp));
      continue;
    }
    for (std::int64_t c = 0; c < count; ++c) {
      const std::uint64_t* code = m.bits + row * words_per_image(m.dk, m.dt) + (first + c) * channel_words;
      std::memcpy(nz + c * wpp, code, sizeof(std::uint64_t) * wpp);
      std::memcpy(neg + c * wpp, code + wpp, sizeof(std::uint64_t) * wpp);
    }
    std::memset(nz + count * wpp, 0, sizeof(std::uint64_t) * (layout.plane_words - count * wpp));
    std::memset(neg + count * wpp, 0, sizeof(std::uint64_t) * (layout.plane_words - count * wpp));
  }
}

// Per image of a compact operand: its dead channels, and per channel the number of negative values.
struct CompactSide {
  std::vector<std::int64_t> dead_begin;  // [n + 1] into dead
  std::vector<std::int32_t> dead;
  std::vector<std::int32_t> negatives;  // [n][dk]
};

CompactSide compact_side(const CodeMatrix& m) {
  CompactSide side;
  const std::int64_t stride = compact_words_per_image(m.dk, m.dt), wpp = words_per_plane(m.dt);
  side.dead_begin.assign(1, 0);
  side.negatives.resize(static_cast<std::size_t>(m.n * m.dk));
  for (std::int64_t i = 0; i < m.n; ++i) {
    const std::uint64_t* image = m.bits + i * stride;
    for (std::int64_t k = 0; k < m.dk; ++k) {
      if (!channel_live(image, k)) side.dead.push_back(static_cast<std::int32_t>(k));
      const std::uint64_t* row = compact_sign_row(image, m.dk, m.dt, k);
      std::int32_t count = 0;
      for (std::int64_t w = 0; w < wpp; ++w) count += __builtin_popcountll(row[w]);
      side.negatives[static_cast<std::size_t>(i * m.dk + k)] = count;
    }
    side.dead_begin.push_back(static_cast<std::int64_t>(side.dead.size()));
  }
  return side;
}

// Turns the kernel's XOR counts of a tile's valid rows x cols (row stride `stride`; rows i0.., columns j0..) into
// dot products.
void compact_counts_to_dots(const CodeMatrix& a, const CompactSide& side_a, const CodeMatrix& b,
                            const CompactSide& side_b, std::int64_t i0, std::int64_t j0, std::int64_t rows,
                            std::int64_t cols, std::int64_t stride_cols, std::int32_t* tile) {
  const std::int64_t lw = live_words(a.dk), image_stride = compact_words_per_image(a.dk, a.dt);
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::uint64_t* live_a = a.bits + (i0 + i) * image_stride;
    const std::int32_t* neg_a = side_a.negatives.data() + (i0 + i) * a.dk;
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::uint64_t* live_b = b.bits + (j0 + j) * image_stride;
      const std::int32_t* neg_b = side_b.negatives.data() + (j0 + j) * b.dk;
      std::int64_t both_live = 0, one_sided = 0;
      for (std::int64_t w = 0; w < lw; ++w) both_live += __builtin_popcountll(live_a[w] & live_b[w]);
      for (std::int64_t d = side_b.dead_begin[j0 + j]; d < side_b.dead_begin[j0 + j + 1]; ++d)
        one_sided += neg_a[side_b.dead[d]];
      for (std::int64_t d = side_a.dead_begin[i0 + i]; d < side_a.dead_begin[i0 + i + 1]; ++d)
        one_sided += neg_b[side_a.dead[d]];
      std::int32_t& value = tile[i * stride_cols + j];
      value = static_cast<std::int32_t>(a.dt * both_live - 2 * (value - one_sided));
    }
  }
}

// Output tiles to score: all of them, or for gram(a, a) those on or above the diagonal.
std::vector<std::pair<std::int64_t, std::int64_t>> tiles_to_score(std::int64_t na, std::int64_t nb, bool symmetric) {
  std::vector<std::pair<std::int64_t, std::int64_t>> tiles;
  for (std::int64_t i0 = 0; i0 < na; i0 += kTile)
    for (std::int64_t j0 = symmetric ? i0 : 0; j0 < nb; j0 += kTile) tiles.emplace_back(i0, j0);
  return tiles;
}

// Copies the valid part of a tile (rows x cols, row stride cols) to out[i0.., j0..], and for gram(a, a) also to
// its mirror position out[j0.., i0..]. A diagonal tile of gram(a, a) holds only its upper triangle (upper_only).
void store_tile(const std::int32_t* tile, std::int64_t cols, std::int64_t i0, std::int64_t j0, std::int64_t valid_rows,
                std::int64_t valid_cols, bool mirror, std::int32_t* out, std::int64_t nb) {
  if (mirror && i0 == j0) {
    for (std::int64_t i = 0; i < valid_rows; ++i)
      for (std::int64_t j = i; j < valid_cols; ++j) out[(i0 + i) * nb + j0 + j] = out[(j0 + j) * nb + i0 + i] = tile[i * cols + j];
    return;
  }
  for (std::int64_t i = 0; i < valid_rows; ++i)
    std::memcpy(out + (i0 + i) * nb + j0, tile + i * cols, sizeof(std::int32_t) * valid_cols);
  if (!mirror) return;
  for (std::int64_t j = 0; j < valid_cols; ++j)
    for (std::int64_t i = 0; i < valid_rows; ++i) out[(j0 + j) * nb + i0 + i] = tile[i * cols + j];
}

}  // namespace

const char* gram_cpu(const GramArgs& args) {
  const char* err = check_matrix(args.a);
  if (*err) return err;
  if (*(err = check_matrix(args.b))) return err;
  if (args.a.dk != args.b.dk || args.a.dt != args.b.dt) return "a and b must have the same dk and dt";
  if (args.a.layout != args.b.layout) return "a and b must have the same layout (2-plane or compact)";
  const std::int64_t na = args.a.n, nb = args.b.n;
  if (na == 0 || nb == 0) return "";
  if (args.out == nullptr) return "out is null";
  const bool symmetric = args.a.bits == args.b.bits && na == nb;
  const bool compact = args.a.layout == CodeLayout::kCompact;
  const detail::GramTileFn gram_tile =
      compact ? detail::active_kernels().gram_tile_compact : detail::active_kernels().gram_tile;
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();

  const PackedLayout layout_a = packed_layout(na, args.a.dk, args.a.dt, args.a.layout);
  const PackedLayout layout_b = packed_layout(nb, args.b.dk, args.b.dt, args.b.layout);
  CompactSide side_a, side_b;
  if (compact) {
    side_a = compact_side(args.a);
    if (!symmetric) side_b = compact_side(args.b);
  }
  const CompactSide& side_b_ref = symmetric ? side_a : side_b;
  WordBuffer packed_a = allocate_packed(layout_a);
  WordBuffer packed_b = symmetric ? nullptr : allocate_packed(layout_b);
  if (!packed_a || (!symmetric && !packed_b)) return "out of memory for the packed Gram operands";
  const std::uint64_t* b_base = symmetric ? packed_a.get() : packed_b.get();
  const auto tiles = tiles_to_score(na, nb, symmetric);
  const std::int64_t n_tiles = static_cast<std::int64_t>(tiles.size());

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t r = 0; r < layout_a.rows; ++r) gram_pack_row(args.a, r, layout_a, packed_a.get());
    if (!symmetric) {
#pragma omp for schedule(static) nowait
      for (std::int64_t r = 0; r < layout_b.rows; ++r) gram_pack_row(args.b, r, layout_b, packed_b.get());
    }
#pragma omp barrier
    std::vector<std::int32_t> tile(static_cast<std::size_t>(kTile * kTile));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t t = 0; t < n_tiles; ++t) {
      const auto [i0, j0] = tiles[static_cast<std::size_t>(t)];
      const std::int64_t rows = i0 + kTile < layout_a.rows ? kTile : layout_a.rows - i0;
      const std::int64_t cols = j0 + kTile < layout_b.rows ? kTile : layout_b.rows - j0;
      std::memset(tile.data(), 0, sizeof(std::int32_t) * rows * cols);
      for (std::int64_t chunk = 0; chunk < layout_a.chunks; ++chunk)
        gram_tile(packed_a.get() + chunk * layout_a.chunk_words() + i0 * layout_a.row_words(), rows,
                  b_base + chunk * layout_b.chunk_words() + j0 * layout_b.row_words(), cols, layout_a.plane_words,
                  symmetric && i0 == j0, tile.data());
      if (compact)
        compact_counts_to_dots(args.a, side_a, args.b, side_b_ref, i0, j0, i0 + rows < na ? rows : na - i0,
                               j0 + cols < nb ? cols : nb - j0, cols, tile.data());
      store_tile(tile.data(), cols, i0, j0, i0 + rows < na ? rows : na - i0, j0 + cols < nb ? cols : nb - j0,
                 symmetric, args.out, nb);
    }
  }
  return "";
}

}  // namespace crosslayer
