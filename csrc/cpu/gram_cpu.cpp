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
  std::int64_t row_words() const { return 2 * plane_words; }
  std::int64_t chunk_words() const { return rows * row_words(); }
};

PackedLayout packed_layout(std::int64_t n, std::int64_t dk, std::int64_t dt) {
  const std::int64_t wpp = words_per_plane(dt);
  PackedLayout layout;
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
    for (std::int64_t c = 0; c < count; ++c) {
      const std::uint64_t* code = m.bits + row * words_per_image(m.dk, m.dt) + (first + c) * channel_words;
      std::memcpy(nz + c * wpp, code, sizeof(std::uint64_t) * wpp);
      std::memcpy(neg + c * wpp, code + wpp, sizeof(std::uint64_t) * wpp);
    }
    std::memset(nz + count * wpp, 0, sizeof(std::uint64_t) * (layout.plane_words - count * wpp));
    std::memset(neg + count * wpp, 0, sizeof(std::uint64_t) * (layout.plane_words - count * wpp));
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
  const std::int64_t na = args.a.n, nb = args.b.n;
  if (na == 0 || nb == 0) return "";
  if (args.out == nullptr) return "out is null";
  const bool symmetric = args.a.bits == args.b.bits && na == nb;
  const detail::GramTileFn gram_tile = detail::active_kernels().gram_tile;
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();

  const PackedLayout layout_a = packed_layout(na, args.a.dk, args.a.dt);
  const PackedLayout layout_b = packed_layout(nb, args.b.dk, args.b.dt);
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
      store_tile(tile.data(), cols, i0, j0, i0 + rows < na ? rows : na - i0, j0 + cols < nb ? cols : nb - j0,
                 symmetric, args.out, nb);
    }
  }
  return "";
}

}  // namespace crosslayer
