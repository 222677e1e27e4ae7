// Gram matrix of sign codes on the CPU (crosslayer/search.h). Blocked like a GEMM: the channel axis is cut into
// slabs so one block of `a` and one block of `b` (kBlockA/kBlockB images x kSlab channels) stay in L2 while every
// pair between them is scored; out accumulates the slabs. Threads own row blocks of `out`. gram(a, a) scores only
// the upper block triangle and mirrors it.
#include <omp.h>

#include <climits>
#include <cstring>

#include "crosslayer/codes.h"
#include "crosslayer/search.h"
#include "ternary_kernels.h"

namespace crosslayer {
namespace {

constexpr std::int64_t kBlockA = 64;
constexpr std::int64_t kBlockB = 64;
constexpr std::int64_t kSlabChannels = 64;

const char* check_matrix(const CodeMatrix& m) {
  if (m.n < 0 || m.dk < 1 || m.dt < 1) return "code matrix needs n >= 0, dk >= 1, dt >= 1";
  if (m.n > 0 && m.bits == nullptr) return "code matrix bits are null";
  if (m.dk * m.dt > INT32_MAX) return "dk * dt must stay below 2^31 for exact int32 scores";
  return "";
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
  const std::int64_t dk = args.a.dk, wpp = words_per_plane(args.a.dt), stride = words_per_image(dk, args.a.dt);
  const bool symmetric = args.a.bits == args.b.bits && na == nb;
  const detail::DotRowFn dot_row = detail::active_kernels().dot_row;
  const std::int64_t row_blocks = (na + kBlockA - 1) / kBlockA;
  const int threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
  std::int32_t* out = args.out;

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t block = 0; block < row_blocks; ++block) {
    const std::int64_t i0 = block * kBlockA, i1 = i0 + kBlockA < na ? i0 + kBlockA : na;
    const std::int64_t j_start = symmetric ? i0 : 0;
    for (std::int64_t i = i0; i < i1; ++i) std::memset(out + i * nb + j_start, 0, sizeof(std::int32_t) * (nb - j_start));
    for (std::int64_t c0 = 0; c0 < dk; c0 += kSlabChannels) {
      const std::int64_t channels = c0 + kSlabChannels < dk ? kSlabChannels : dk - c0;
      for (std::int64_t j0 = j_start; j0 < nb; j0 += kBlockB) {
        const std::int64_t j1 = j0 + kBlockB < nb ? j0 + kBlockB : nb;
        for (std::int64_t i = i0; i < i1; ++i)
          dot_row(args.a.bits + i * stride, args.b.bits + j0 * stride, j1 - j0, stride, nullptr, c0, channels, wpp,
                  out + i * nb + j0);
      }
    }
  }
  if (symmetric) {
    // Lower block triangle (below the diagonal blocks) from the upper one.
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < na; ++i) {
      const std::int64_t row_block_start = (i / kBlockA) * kBlockA;
      for (std::int64_t j = 0; j < row_block_start; ++j) out[i * nb + j] = out[j * nb + i];
    }
  }
  return "";
}

}  // namespace crosslayer
