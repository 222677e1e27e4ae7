// The C API (crosslayer/crosslayer.h) over the C++ kernels: argument checks a C caller has no Python layer to do for
// it, then one kernel call. Version, build info and the error boundary live here too.
#include <omp.h>

#include <cstdint>
#include <string>

#include "crosslayer/codes.h"
#include "crosslayer/crosslayer.h"
#include "crosslayer/pool.h"
#include "crosslayer/popcount.h"
#include "crosslayer/search.h"
#include "crosslayer/sign_pack.h"
#include "status.h"

#ifndef CROSSLAYER_VERSION
#error "CROSSLAYER_VERSION must be defined by the build"
#endif
#ifndef CROSSLAYER_BLAS_NAME
#error "CROSSLAYER_BLAS_NAME must be defined by the build"
#endif

namespace crosslayer::capi {
namespace {

thread_local std::string last_error;

crosslayer_status pool(const float* local, const float* guidance, std::int64_t n, std::int64_t dt_in,
                       std::int64_t dk, std::int64_t positions, const float* pca_mean, const float* pca_projection,
                       std::int64_t dt, PoolOutput output, float* representation, std::uint64_t* bits,
                       float* channel_mean, int num_threads) {
  return guarded([&] {
    require_dimension(n, 0, "n");
    require_dimension(dt_in, 1, "dt_in");
    require_dimension(dk, 1, "dk");
    require_dimension(positions, 1, "positions");
    require_dimension(dt, 1, "dt");
    require((pca_mean == nullptr) == (pca_projection == nullptr),
            "pca_mean, pca_projection: give both (PCA) or neither (NULL, NULL)");
    require(pca_projection != nullptr || dt == dt_in,
            "dt: without PCA it must equal dt_in (" + std::to_string(dt_in) + "), got " + std::to_string(dt));
    if (n > 0) {
      require(local != nullptr, "local: expected float32 [n][dt_in][positions], got NULL");
      require(guidance != nullptr, "guidance: expected float32 [n][dk][positions], got NULL");
      require(representation != nullptr || bits != nullptr, "output: expected a buffer, got NULL");
    }
    PoolArgs args;
    args.shape = PoolShape{n, dt_in, dt, dk, positions};
    args.local = local;
    args.guidance = guidance;
    args.pca_mean = pca_mean;
    args.pca_proj = pca_projection;
    args.output = output;
    args.out_float = representation;
    args.out_bits = bits;
    args.channel_mean = channel_mean;
    args.num_threads = num_threads;
    const char* error = pool_cpu(args);
    require_kernel_ok(error, error == kPoolNotFinite ? CROSSLAYER_NOT_FINITE : CROSSLAYER_INVALID_ARGUMENT);
  });
}

CodeLayout code_layout(int layout) {
  require(layout == CROSSLAYER_LAYOUT_TWO_PLANE || layout == CROSSLAYER_LAYOUT_COMPACT,
          "layout: expected CROSSLAYER_LAYOUT_TWO_PLANE (0) or CROSSLAYER_LAYOUT_COMPACT (1), got " +
              std::to_string(layout));
  return layout == CROSSLAYER_LAYOUT_COMPACT ? CodeLayout::kCompact : CodeLayout::kTwoPlane;
}

CodeMatrix code_matrix(const std::uint64_t* bits, std::int64_t n, std::int64_t dk, std::int64_t dt,
                       CodeLayout layout, const std::string& name) {
  require_dimension(n, 0, ("n_" + name).c_str());
  require(n == 0 || bits != nullptr,
          name + (layout == CodeLayout::kCompact ? ": expected uint64 [n][ceil(dk/64) + dk*ceil(dt/64)] compact codes"
                                                 : ": expected uint64 [n][dk][2][ceil(dt/64)] codes") + ", got NULL");
  return CodeMatrix{bits, n, dk, dt, layout};
}

}  // namespace

void set_last_error(const std::string& message) { last_error = message; }

crosslayer_status fail(crosslayer_status status, const std::string& message) {
  set_last_error(message.empty() ? crosslayer_status_name(status) : message);
  return status;
}

}  // namespace crosslayer::capi

using namespace crosslayer;
using namespace crosslayer::capi;

extern "C" {

const char* crosslayer_version(void) { return CROSSLAYER_VERSION; }

int crosslayer_api_version(void) { return CROSSLAYER_API_VERSION; }

const char* crosslayer_build_info(void) {
  // Computed per call (the popcount path and thread count can change); kept per thread so the pointer stays valid.
  thread_local std::string info;
  info = std::string("version=") + CROSSLAYER_VERSION + ";api=" + std::to_string(CROSSLAYER_API_VERSION) +
         ";blas=" + CROSSLAYER_BLAS_NAME + ";openmp_max_threads=" + std::to_string(omp_get_max_threads()) +
         ";popcount=" + popcount_path() + ";sign_pack=" + sign_pack_path() + ";compiler=" +
#if defined(__clang__)
         "clang " __clang_version__;
#elif defined(__GNUC__)
         "gcc " __VERSION__;
#else
         "unknown";
#endif
  return info.c_str();
}

const char* crosslayer_last_error(void) { return last_error.c_str(); }

const char* crosslayer_status_name(crosslayer_status status) {
  switch (status) {
    case CROSSLAYER_OK: return "CROSSLAYER_OK";
    case CROSSLAYER_INVALID_ARGUMENT: return "CROSSLAYER_INVALID_ARGUMENT";
    case CROSSLAYER_NOT_FINITE: return "CROSSLAYER_NOT_FINITE";
    case CROSSLAYER_IO_ERROR: return "CROSSLAYER_IO_ERROR";
    case CROSSLAYER_FORMAT_ERROR: return "CROSSLAYER_FORMAT_ERROR";
    case CROSSLAYER_OUT_OF_MEMORY: return "CROSSLAYER_OUT_OF_MEMORY";
    case CROSSLAYER_INTERNAL_ERROR: return "CROSSLAYER_INTERNAL_ERROR";
  }
  return "unknown crosslayer_status";
}

const char* crosslayer_popcount_path(void) { return popcount_path(); }

crosslayer_status crosslayer_set_popcount_path(const char* name) {
  return guarded([&] {
    require(name != nullptr, "name: expected a popcount path name, got NULL");
    const char* error = set_popcount_path(name);
    require(error[0] == '\0', std::string("name: popcount path '") + name + "': " + error);
  });
}

int crosslayer_popcount_path_count(void) { return popcount_path_count(); }

const char* crosslayer_popcount_path_name(int index) {
  return index >= 0 && index < popcount_path_count() ? popcount_path_name(index) : nullptr;
}

const char* crosslayer_sign_pack_path(void) { return sign_pack_path(); }

crosslayer_status crosslayer_set_sign_pack_path(const char* name) {
  return guarded([&] {
    require(name != nullptr, "name: expected a sign packing path name, got NULL");
    const char* error = set_sign_pack_path(name);
    require(error[0] == '\0', std::string("name: sign packing path '") + name + "': " + error);
  });
}

int crosslayer_sign_pack_path_count(void) { return sign_pack_path_count(); }

const char* crosslayer_sign_pack_path_name(int index) {
  return index >= 0 && index < sign_pack_path_count() ? sign_pack_path_name(index) : nullptr;
}

crosslayer_status crosslayer_pool_float(const float* local, const float* guidance, int64_t n, int64_t dt_in,
                                        int64_t dk, int64_t positions, const float* pca_mean,
                                        const float* pca_projection, int64_t dt, float* representation,
                                        float* channel_mean, int num_threads) {
  if (n > 0 && representation == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "representation: expected float32 [n][dk*dt], got NULL");
  return pool(local, guidance, n, dt_in, dk, positions, pca_mean, pca_projection, dt, PoolOutput::Float,
              representation, nullptr, channel_mean, num_threads);
}

crosslayer_status crosslayer_pool_codes(const float* local, const float* guidance, int64_t n, int64_t dt_in,
                                        int64_t dk, int64_t positions, const float* pca_mean,
                                        const float* pca_projection, int64_t dt, uint64_t* bits,
                                        float* channel_mean, int num_threads) {
  if (n > 0 && bits == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "bits: expected uint64 [n][dk][2][ceil(dt/64)], got NULL");
  return pool(local, guidance, n, dt_in, dk, positions, pca_mean, pca_projection, dt, PoolOutput::Codes, nullptr,
              bits, channel_mean, num_threads);
}

crosslayer_status crosslayer_pool_compact(const float* local, const float* guidance, int64_t n, int64_t dt_in,
                                          int64_t dk, int64_t positions, const float* pca_mean,
                                          const float* pca_projection, int64_t dt, uint64_t* bits,
                                          float* channel_mean, int num_threads) {
  if (n > 0 && bits == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "bits: expected uint64 [n][ceil(dk/64) + dk*ceil(dt/64)], got NULL");
  return pool(local, guidance, n, dt_in, dk, positions, pca_mean, pca_projection, dt, PoolOutput::Compact, nullptr,
              bits, channel_mean, num_threads);
}

namespace {

crosslayer_status finish_pooled(const float* pooled, std::int64_t n, std::int64_t dk, std::int64_t dt,
                                PoolOutput output, float* representation, std::uint64_t* bits, int num_threads) {
  return guarded([&] {
    require_dimension(n, 0, "n");
    require_dimension(dk, 1, "dk");
    require_dimension(dt, 1, "dt");
    if (n > 0) require(pooled != nullptr, "pooled: expected float32 [n][dk][dt], got NULL");
    PoolFinishArgs args;
    args.n = n;
    args.dk = dk;
    args.dt = dt;
    args.pooled = pooled;
    args.output = output;
    args.out_float = representation;
    args.out_bits = bits;
    args.num_threads = num_threads;
    const char* error = pool_finish_cpu(args);
    require_kernel_ok(error, error == kPoolNotFinite ? CROSSLAYER_NOT_FINITE : CROSSLAYER_INVALID_ARGUMENT);
  });
}

}  // namespace

crosslayer_status crosslayer_finish_pooled_float(const float* pooled, int64_t n, int64_t dk, int64_t dt,
                                                 float* representation, int num_threads) {
  if (n > 0 && representation == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "representation: expected float32 [n][dk*dt], got NULL");
  return finish_pooled(pooled, n, dk, dt, PoolOutput::Float, representation, nullptr, num_threads);
}

crosslayer_status crosslayer_finish_pooled_codes(const float* pooled, int64_t n, int64_t dk, int64_t dt, uint64_t* bits,
                                                 int num_threads) {
  if (n > 0 && bits == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "bits: expected uint64 [n][dk][2][ceil(dt/64)], got NULL");
  return finish_pooled(pooled, n, dk, dt, PoolOutput::Codes, nullptr, bits, num_threads);
}

crosslayer_status crosslayer_finish_pooled_compact(const float* pooled, int64_t n, int64_t dk, int64_t dt,
                                                   uint64_t* bits, int num_threads) {
  if (n > 0 && bits == nullptr)
    return fail(CROSSLAYER_INVALID_ARGUMENT, "bits: expected uint64 [n][ceil(dk/64) + dk*ceil(dt/64)], got NULL");
  return finish_pooled(pooled, n, dk, dt, PoolOutput::Compact, nullptr, bits, num_threads);
}

crosslayer_status crosslayer_gram(const uint64_t* a, int64_t n_a, const uint64_t* b, int64_t n_b, int64_t dk,
                                  int64_t dt, int32_t* out, int num_threads) {
  return crosslayer_gram_layout(CROSSLAYER_LAYOUT_TWO_PLANE, a, n_a, b, n_b, dk, dt, out, num_threads);
}

crosslayer_status crosslayer_gram_layout(int layout, const uint64_t* a, int64_t n_a, const uint64_t* b, int64_t n_b,
                                         int64_t dk, int64_t dt, int32_t* out, int num_threads) {
  return guarded([&] {
    require_dimension(dk, 1, "dk");
    require_dimension(dt, 1, "dt");
    const CodeLayout code_layout_ = code_layout(layout);
    GramArgs args;
    args.a = code_matrix(a, n_a, dk, dt, code_layout_, "a");
    args.b = b == nullptr ? args.a : code_matrix(b, n_b, dk, dt, code_layout_, "b");
    require(b != nullptr || n_b == n_a,
            "n_b: with b == NULL (a against itself) it must equal n_a, got " + std::to_string(n_b));
    require(out != nullptr || args.a.n == 0 || args.b.n == 0, "out: expected int32 [n_a][n_b], got NULL");
    args.out = out;
    args.num_threads = num_threads;
    require_kernel_ok(gram_cpu(args));
  });
}

crosslayer_status crosslayer_search(const uint64_t* queries, int64_t n_queries, const uint64_t* database,
                                    int64_t n_database, int64_t dk, int64_t dt, const int32_t* channels,
                                    int64_t n_channels, int64_t k, int64_t id_base, int merge_with_existing,
                                    int32_t* out_scores, int64_t* out_ids, int num_threads) {
  return crosslayer_search_layout(CROSSLAYER_LAYOUT_TWO_PLANE, queries, n_queries, database, n_database, dk, dt,
                                  channels, n_channels, k, id_base, merge_with_existing, out_scores, out_ids,
                                  num_threads);
}

crosslayer_status crosslayer_search_layout(int layout, const uint64_t* queries, int64_t n_queries,
                                           const uint64_t* database, int64_t n_database, int64_t dk, int64_t dt,
                                           const int32_t* channels, int64_t n_channels, int64_t k, int64_t id_base,
                                           int merge_with_existing, int32_t* out_scores, int64_t* out_ids,
                                           int num_threads) {
  return guarded([&] {
    require_dimension(dk, 1, "dk");
    require_dimension(dt, 1, "dt");
    const CodeLayout code_layout_ = code_layout(layout);
    SearchArgs args;
    args.queries = code_matrix(queries, n_queries, dk, dt, code_layout_, "queries");
    args.database = code_matrix(database, n_database, dk, dt, code_layout_, "database");
    require(n_channels >= 1 && n_channels <= dk,
            "n_channels: expected an integer in [1, dk=" + std::to_string(dk) + "], got " + std::to_string(n_channels));
    require(k >= 1 && (merge_with_existing || k <= n_database),
            "k: expected an integer in [1, n_database=" + std::to_string(n_database) + "], got " + std::to_string(k));
    require(id_base >= 0, "id_base: expected >= 0, got " + std::to_string(id_base));
    if (n_queries > 0) {
      require(channels != nullptr, "channels: expected int32 [n_queries][n_channels], got NULL");
      require(out_scores != nullptr, "out_scores: expected int32 [n_queries][k], got NULL");
      require(out_ids != nullptr, "out_ids: expected int64 [n_queries][k], got NULL");
      // the message is built only for the bad entry: this runs for every query's every channel
      for (std::int64_t i = 0; i < n_queries * n_channels; ++i)
        if (channels[i] < 0 || channels[i] >= dk)
          throw Failure{CROSSLAYER_INVALID_ARGUMENT, "channels: entry " + std::to_string(i) + " is " +
                                                         std::to_string(channels[i]) +
                                                         ", expected a channel index in [0, dk=" + std::to_string(dk) + ")"};
    }
    args.channels = channels;
    args.n_channels = n_channels;
    args.k = k;
    args.id_base = id_base;
    args.merge_with_existing = merge_with_existing != 0;
    args.out_scores = out_scores;
    args.out_ids = out_ids;
    args.num_threads = num_threads;
    require_kernel_ok(search_cpu(args));
  });
}

}  // extern "C"
