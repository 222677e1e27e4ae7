// Gram matrix of sign codes on the CPU (crosslayer/search.h), organised like a GEMM.
//
// The channel axis is cut into chunks of about kChunkPlaneWords words per plane. For each chunk both operands are
// packed (gram_pack): per image the chunk's nonzero words back to back, then its negative words, each plane zero
// padded to whole vectors, so the kernel runs full-width loads over one contiguous run instead of a short masked
// load per channel (Dt=320 -> 5 of 8 words). Threads then take kTile x kTile tiles of `out`; a tile's packed `b`
// rows (kTile x 4 KB) stay in L2 while 4 packed `a` rows at a time (L1) meet them in a 4 x 4 register-blocked
// kernel, and the chunk's tile of dot products is added to `out`. gram(a, a) scores only the tiles on and above the
// diagonal and mirrors the rest.
#include <omp.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "crosslayer/codes.h"
#include "crosslayer/search.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace {

constexpr std::int64_t kTile = 64;               // output tile side, a multiple of detail::kGramRowGroup
constexpr std::int64_t kChunkPlaneWords = 256;   // 2 KB per plane: 4 KB per packed row
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

WordBuffer allocate_words(std::int64_t words) {
  const std::size_t bytes = static_cast<std::size_t>(round_up(words * 8, 64));
  return WordBuffer(static_cast<std::uint64_t*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64)));
}

// Channel chunk [first, first + count) of a code matrix packed as rows of two planes of plane_words words.
struct PackedChunk {
  std::int64_t first = 0;
  std::int64_t count = 0;
  std::int64_t plane_words = 0;
};

// Packs row `row` of `m` (rows >= m.n are zero padding) for `chunk` into dst (2 * chunk.plane_words words).
void gram_pack_row(const CodeMatrix& m, std::int64_t row, const PackedChunk& chunk, std::uint64_t* dst) {
  const std::int64_t wpp = words_per_plane(m.dt), used = chunk.count * wpp;
  std::uint64_t* nz = dst;
  std::uint64_t* neg = dst + chunk.plane_words;
  if (row < m.n) {
    const std::uint64_t* code = m.bits + row * words_per_image(m.dk, m.dt) + chunk.first * words_per_channel(m.dt);
    for (std::int64_t c = 0; c < chunk.count; ++c, code += 2 * wpp) {
      std::memcpy(nz + c * wpp, code, sizeof(std::uint64_t) * wpp);
      std::memcpy(neg + c * wpp, code + wpp, sizeof(std::uint64_t) * wpp);
    }
  } else {
    std::memset(nz, 0, sizeof(std::uint64_t) * used);
    std::memset(neg, 0, sizeof(std::uint64_t) * used);
  }
  std::memset(nz + used, 0, sizeof(std::uint64_t) * (chunk.plane_words - used));
  std::memset(neg + used, 0, sizeof(std::uint64_t) * (chunk.plane_words - used));
}

// Output tiles a thread may take: all of them, or for gram(a, a) those on or above the diagonal.
std::vector<std::pair<std::int64_t, std::int64_t>> tiles_to_score(std::int64_t na, std::int64_t nb, bool symmetric) {
  std::vector<std::pair<std::int64_t, std::int64_t>> tiles;
  for (std::int64_t i0 = 0; i0 < na; i0 += kTile)
    for (std::int64_t j0 = symmetric ? i0 : 0; j0 < nb; j0 += kTile) tiles.emplace_back(i0, j0);
  return tiles;
}

}  // namespace

const char* gram_cpu(const GramArgs& args) {
  const char* err = check_matrix(args.a);
  if (*err) return err;
  if (*(err = check_matrix(args.b))) return err;
  if (args.a.dk != args.b.dk || args.a.dt != args.b.dt) return "a and b must have the same dk and dt";
  const std::int64_t na = args.a.n, nb = args.b.n, dk = args.a.dk;
  if (na == 0 || nb == 0) return "";
  if (args.out == nullptr) return "out is null";
  const bool symmetric = args.a.bits == args.b.bits && na == nb;
  const detail::GramTileFn gram_tile = detail::active_kernels().gram_tile;
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();

  const std::int64_t wpp = words_per_plane(args.a.dt);
  const std::int64_t chunk_channels = wpp >= kChunkPlaneWords ? 1 : kChunkPlaneWords / wpp;
  const std::int64_t plane_words = round_up(chunk_channels * wpp, detail::kPackedWordMultiple);
  const std::int64_t row_words = 2 * plane_words;
  const std::int64_t na_rows = round_up(na, detail::kGramRowGroup), nb_rows = round_up(nb, detail::kGramRowGroup);
  WordBuffer packed_a = allocate_words(na_rows * row_words);
  WordBuffer packed_b = symmetric ? nullptr : allocate_words(nb_rows * row_words);
  if (!packed_a || (!symmetric && !packed_b)) return "out of memory for the packed Gram operands";
  const std::uint64_t* b_rows_base = symmetric ? packed_a.get() : packed_b.get();
  const auto tiles = tiles_to_score(na, nb, symmetric);
  const std::int64_t n_tiles = static_cast<std::int64_t>(tiles.size());
  std::int32_t* out = args.out;
  std::memset(out, 0, sizeof(std::int32_t) * na * nb);

#pragma omp parallel num_threads(threads)
  {
    std::vector<std::int32_t> tile(static_cast<std::size_t>(kTile * kTile));
    for (std::int64_t first = 0; first < dk; first += chunk_channels) {
      const PackedChunk chunk{first, first + chunk_channels < dk ? chunk_channels : dk - first, plane_words};
#pragma omp for schedule(static)
      for (std::int64_t r = 0; r < na_rows; ++r) gram_pack_row(args.a, r, chunk, packed_a.get() + r * row_words);
      if (!symmetric) {
#pragma omp for schedule(static)
        for (std::int64_t r = 0; r < nb_rows; ++r) gram_pack_row(args.b, r, chunk, packed_b.get() + r * row_words);
      }
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t t = 0; t < n_tiles; ++t) {
        const auto [i0, j0] = tiles[static_cast<std::size_t>(t)];
        const std::int64_t rows = (i0 + kTile < na_rows ? kTile : na_rows - i0);
        const std::int64_t cols = (j0 + kTile < nb_rows ? kTile : nb_rows - j0);
        gram_tile(packed_a.get() + i0 * row_words, rows, b_rows_base + j0 * row_words, cols, plane_words, tile.data());
        const std::int64_t valid_rows = i0 + rows < na ? rows : na - i0, valid_cols = j0 + cols < nb ? cols : nb - j0;
        for (std::int64_t i = 0; i < valid_rows; ++i) {
          std::int32_t* out_row = out + (i0 + i) * nb + j0;
          const std::int32_t* tile_row = tile.data() + i * cols;
          for (std::int64_t j = 0; j < valid_cols; ++j) out_row[j] += tile_row[j];
        }
      }
    }
  }
  if (symmetric) {
    // Tiles below the diagonal from their mirror images above it.
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < na; ++i) {
      const std::int64_t row_tile_start = (i / kTile) * kTile;
      for (std::int64_t j = 0; j < row_tile_start; ++j) out[i * nb + j] = out[j * nb + i];
    }
  }
  return "";
}

}  // namespace crosslayer
