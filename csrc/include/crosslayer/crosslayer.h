/* crosslayer/crosslayer.h — the C API of libcrosslayer (cross-convolutional-layer pooling, Liu/Shen/van den
 * Hengel TPAMI 2017), for C, C++ and any language with a C FFI. It is the one header installed
 * (include/crosslayer/crosslayer.h, found by find_package(crosslayer)) and the only ABI the shared library exports;
 * the library's internal C++ kernel headers stay in the source tree (csrc/include) and are not installed.
 *
 * Contract
 *   Arrays are C-contiguous (row-major), in host memory, little-endian, never retained after a call returns.
 *   The caller owns every buffer it passes and allocates every output at the size stated below; the library only
 *   allocates the crosslayer_codes object that crosslayer_codes_read returns (free it with crosslayer_codes_free).
 *
 *   Pooling (paper eq. 2). local float32 [n][dt_in][positions], guidance float32 [n][dk][positions], positions = H*W
 *   (NCHW activations of two conv layers at the same H, W). Optional PCA: pca_mean float32 [dt_in] and
 *   pca_projection float32 [dt_in][dt], both or neither (NULL: no PCA, dt must equal dt_in). For image b, channel k:
 *       P[b][k][:] = sum_i guidance[b][k][i] * ((local[b][:][i] - pca_mean) @ pca_projection)
 *   crosslayer_pool_float writes representation float32 [n][dk*dt], channel k at [k*dt, (k+1)*dt): each P[b][k]
 *   L2-normalised (an all-zero channel stays zero), then v -> sign(v)*sqrt(|v|).
 *   crosslayer_pool_codes writes bits uint64 [n][dk][2][words], words = ceil(dt/64) (CROSSLAYER_WORDS_PER_PLANE):
 *       plane 0 "nonzero":  bit j set <=> P[b][k][j] != 0;   plane 1 "negative": bit j set <=> P[b][k][j] < 0
 *       value j in word j/64, bit j%64 (bit 0 least significant); padding bits (j >= dt) are zero; the negative
 *       plane is a subset of the nonzero plane. This is exactly Python's `crosslayer.pool(..., output="codes").bits`.
 *   crosslayer_pool_compact writes bits uint64 [n][CROSSLAYER_COMPACT_WORDS_PER_IMAGE(dk, dt)] in the compact layout
 *       (below): live bit k <=> P[b][k] has a nonzero value, sign bit j of channel k <=> P[b][k][j] < 0, an exact
 *       zero inside a live channel coded +1. Exactly Python's `crosslayer.pool(..., output="codes",
 *       layout="compact").bits`, i.e. the _codes bits converted by Codes.compact(lossy=True).
 *   channel_mean float32 [n][dk] (NULL to skip): the mean of guidance[b][k][:] over the positions.
 *   A pooled value that is not finite (NaN/Inf inputs, or |P| > FLT_MAX) fails with CROSSLAYER_NOT_FINITE.
 *
 *   Ternary similarity of codes q, x over channels S:
 *       dot = sum_{k in S} popcount(nz_q & nz_x) - 2 * popcount(nz_q & nz_x & (neg_q ^ neg_x))
 *   crosslayer_gram: out int32 [n_a][n_b], all channels; b == NULL compares a with itself.
 *   crosslayer_search: channels int32 [n_queries][n_channels] (each in [0, dk)); the k best database items per
 *       query by decreasing score, ties to the smaller id; out_scores int32 [n_queries][k], out_ids int64
 *       [n_queries][k], id of database item j = id_base + j. merge_with_existing != 0: the k entries already in the
 *       outputs (an earlier segment's result) take part, so searching segment by segment equals one search.
 *   Code bits given to gram/search must keep the layout's rules (crosslayer_codes_check says whether they do).
 *
 *   Code files (.xlc), version 4 exactly as Python's crosslayer.formats.CodeFile (Codes.save/load, index exports);
 *   version 3 is still read; other versions are refused with CROSSLAYER_FORMAT_ERROR. Little-endian:
 *       header (72 bytes, "<8sIIQIIIQ16sIII"): magic "XLCODES\0", version 4, header size 72, n, dk, dt, words per
 *           plane, key block bytes (u64), identity (16 bytes: ASCII, zero padded), layout (u32, a
 *           crosslayer_layout), reserved (u32, 0), crc32
 *       bits uint64 in the layout ([n][dk][2][words] or compact [n][ceil(dk/64) + dk*words]), then channel_mean
 *       float32 [n][dk], then the key block (absent when its size is 0): a JSON list of n strings or nulls, UTF-8.
 *       Version 3: a 64-byte header without the layout and reserved fields, 2-plane bits.
 *   The crc32 (zlib's) runs over the header without its crc field, then every payload byte in order.
 *   Identity: the digest of the encoder that made the codes (CrossLayerEncoder.identity_digest). On write NULL or ""
 *   records none, otherwise at most 16 ASCII characters; on read crosslayer_codes_identity gives it, NULL for none.
 *   Keys: optional per-item strings (e.g. image names). On write keys == NULL writes no key block; otherwise keys
 *   [n] of UTF-8 strings, a NULL entry being a JSON null, each NUL-terminated (key_lengths == NULL) or of
 *   key_lengths[i] bytes. The block is written as Python's json.dumps writes it, so a file written here is
 *   byte-identical to Codes.save's. On read every key is decoded and checked (a damaged block fails, as in
 *   Python); crosslayer_codes_key returns key i as UTF-8 (NUL-terminated, with its length for keys holding U+0000).
 *   Two files Python reads are refused here, neither of which Python writes from an encoder: an identity holding
 *   a NUL byte, and a key with an unpaired UTF-16 surrogate escape (it has no UTF-8 form).
 *   Writes are atomic (temporary file, fsync, rename; the mode follows the umask as open() would): a reader sees
 *   the old file or the complete new one, and a refused write leaves no file.

 * Errors
 *   Every call that can fail returns a crosslayer_status; CROSSLAYER_OK is 0. On failure the outputs are
 *   unspecified and crosslayer_last_error() returns a message naming the argument and what was expected. No C++
 *   exception ever crosses this ABI.
 *
 * Threads
 *   num_threads <= 0 uses the OpenMP default (OMP_NUM_THREADS or the core count). All calls are thread-safe and
 *   reentrant; the last-error message is per thread. crosslayer_set_popcount_path changes a process-wide setting
 *   and must not run concurrently with gram/search.
 */
#ifndef CROSSLAYER_CROSSLAYER_H
#define CROSSLAYER_CROSSLAYER_H

#include <stdint.h>

#if defined(_WIN32)
#  if defined(CROSSLAYER_BUILDING_LIBRARY)
#    define CROSSLAYER_API __declspec(dllexport)
#  else
#    define CROSSLAYER_API __declspec(dllimport)
#  endif
#else
#  define CROSSLAYER_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a function's signature or meaning changes; crosslayer_api_version() reports the library's. */
#define CROSSLAYER_API_VERSION 5  /* 5: crosslayer_pool_compact, crosslayer_finish_pooled_compact, the sign packing path; 4: crosslayer_finish_pooled_float/_codes; 3: code file v4 (layouts), compact-code scoring, the coarse prefix scan; 2: code file v3 */
#define CROSSLAYER_WORDS_PER_PLANE(dt) (((dt) + 63) / 64)

typedef enum crosslayer_status {
  CROSSLAYER_OK = 0,
  CROSSLAYER_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad shape or value; the message names it */
  CROSSLAYER_NOT_FINITE = 2,       /* a pooled value is NaN or infinite */
  CROSSLAYER_IO_ERROR = 3,         /* a file could not be opened, read or written */
  CROSSLAYER_FORMAT_ERROR = 4,     /* a file is not a code file, of an unknown version, or damaged */
  CROSSLAYER_OUT_OF_MEMORY = 5,
  CROSSLAYER_INTERNAL_ERROR = 6
} crosslayer_status;

/* ---- version, build, errors ------------------------------------------------------------------------------------ */
CROSSLAYER_API const char* crosslayer_version(void);   /* the package version, e.g. "0.2.0" */
CROSSLAYER_API int crosslayer_api_version(void);       /* CROSSLAYER_API_VERSION the library was built with */
/* "key=value" pairs separated by ';': version, api, blas, openmp_max_threads, popcount, sign_pack, compiler. */
CROSSLAYER_API const char* crosslayer_build_info(void);
/* The message of this thread's last failed call ("" if none). Valid until this thread's next failing call. */
CROSSLAYER_API const char* crosslayer_last_error(void);
CROSSLAYER_API const char* crosslayer_status_name(crosslayer_status status); /* "CROSSLAYER_OK", ... */

/* ---- popcount implementation of gram/search ------------------------------------------------------------------- */
CROSSLAYER_API const char* crosslayer_popcount_path(void);
CROSSLAYER_API crosslayer_status crosslayer_set_popcount_path(const char* name);
CROSSLAYER_API int crosslayer_popcount_path_count(void);
CROSSLAYER_API const char* crosslayer_popcount_path_name(int index); /* NULL when out of range */

/* ---- sign packing implementation of the pooling's codes (same bits on every path) ------------------------------- */
/* Paths, fastest first: "avx512", "portable"; the fastest this CPU supports is chosen at load time. Setting one is a
 * process-wide change, read by each pooling call at its start. */
CROSSLAYER_API const char* crosslayer_sign_pack_path(void);
CROSSLAYER_API crosslayer_status crosslayer_set_sign_pack_path(const char* name);
CROSSLAYER_API int crosslayer_sign_pack_path_count(void);
CROSSLAYER_API const char* crosslayer_sign_pack_path_name(int index); /* NULL when out of range */

/* ---- pooling --------------------------------------------------------------------------------------------------- */
CROSSLAYER_API crosslayer_status crosslayer_pool_float(const float* local, const float* guidance, int64_t n,
                                                       int64_t dt_in, int64_t dk, int64_t positions,
                                                       const float* pca_mean, const float* pca_projection, int64_t dt,
                                                       float* representation, float* channel_mean, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_pool_codes(const float* local, const float* guidance, int64_t n,
                                                       int64_t dt_in, int64_t dk, int64_t positions,
                                                       const float* pca_mean, const float* pca_projection, int64_t dt,
                                                       uint64_t* bits, float* channel_mean, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_pool_compact(const float* local, const float* guidance, int64_t n,
                                                         int64_t dt_in, int64_t dk, int64_t positions,
                                                         const float* pca_mean, const float* pca_projection,
                                                         int64_t dt, uint64_t* bits, float* channel_mean,
                                                         int num_threads);

/* The pooling's last step alone, for P computed elsewhere (e.g. by a runtime's graph): pooled float32 [n][dk][dt]
 * (P[b][k][:] as above) -> representation float32 [n][dk*dt] (may be `pooled` itself: in place) or bits (2-plane
 * or compact), exactly as crosslayer_pool_float / _codes / _compact finish their own P. Non-finite values:
 * CROSSLAYER_NOT_FINITE. */
CROSSLAYER_API crosslayer_status crosslayer_finish_pooled_float(const float* pooled, int64_t n, int64_t dk, int64_t dt,
                                                                float* representation, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_finish_pooled_codes(const float* pooled, int64_t n, int64_t dk, int64_t dt,
                                                                uint64_t* bits, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_finish_pooled_compact(const float* pooled, int64_t n, int64_t dk,
                                                                  int64_t dt, uint64_t* bits, int num_threads);

/* ---- similarity of codes ---------------------------------------------------------------------------------------- */
/* Code layouts: 2-plane (above) or compact: per image live[ceil(dk/64)] (bit k: channel k has a nonzero value; bits
 * >= dk zero) then sign[dk][ceil(dt/64)] (bit j of channel k: P[k][j] < 0; zero for a dead channel; padding zero),
 * CROSSLAYER_COMPACT_WORDS_PER_IMAGE(dk, dt) words an image. Exactly Python's Codes.compact().bits. On compact
 * codes dot = sum over channels of S live in both q and x of dt - 2 * popcount(sign_q ^ sign_x): the same integers
 * as on the same codes in 2-plane form. */
typedef enum crosslayer_layout { CROSSLAYER_LAYOUT_TWO_PLANE = 0, CROSSLAYER_LAYOUT_COMPACT = 1 } crosslayer_layout;
#define CROSSLAYER_COMPACT_WORDS_PER_IMAGE(dk, dt) (((dk) + 63) / 64 + (dk) * CROSSLAYER_WORDS_PER_PLANE(dt))

CROSSLAYER_API crosslayer_status crosslayer_gram(const uint64_t* a, int64_t n_a, const uint64_t* b, int64_t n_b,
                                                 int64_t dk, int64_t dt, int32_t* out, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_search(const uint64_t* queries, int64_t n_queries,
                                                   const uint64_t* database, int64_t n_database, int64_t dk,
                                                   int64_t dt, const int32_t* channels, int64_t n_channels, int64_t k,
                                                   int64_t id_base, int merge_with_existing, int32_t* out_scores,
                                                   int64_t* out_ids, int num_threads);
/* crosslayer_gram / crosslayer_search on codes of `layout` (a crosslayer_layout; both operands in that layout). */
CROSSLAYER_API crosslayer_status crosslayer_gram_layout(int layout, const uint64_t* a, int64_t n_a, const uint64_t* b,
                                                        int64_t n_b, int64_t dk, int64_t dt, int32_t* out,
                                                        int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_search_layout(int layout, const uint64_t* queries, int64_t n_queries,
                                                          const uint64_t* database, int64_t n_database, int64_t dk,
                                                          int64_t dt, const int32_t* channels, int64_t n_channels,
                                                          int64_t k, int64_t id_base, int merge_with_existing,
                                                          int32_t* out_scores, int64_t* out_ids, int num_threads);
/* CROSSLAYER_OK when bits [n][dk][2][words] keep the layout's rules; otherwise INVALID_ARGUMENT naming the item. */
CROSSLAYER_API crosslayer_status crosslayer_codes_check(const uint64_t* bits, int64_t n, int64_t dk, int64_t dt);

/* crosslayer_codes_check for codes of `layout` (compact: live bits >= dk, sign padding bits and sign bits of dead
 * channels must be zero). */
CROSSLAYER_API crosslayer_status crosslayer_codes_check_layout(int layout, const uint64_t* bits, int64_t n, int64_t dk,
                                                               int64_t dt);

/* ---- two-stage search: the coarse stage (crosslayer/prefix_scan.h has the table layout) --------------------------
 *   crosslayer_prefix_scores: table [dk][n_items] words of word_bits (16, 32, 64): per channel and item, the signs of
 *       the first prefix_bits code values (bit 0 up) and a live bit (the top bit). Adds to scores[i] (int16 for
 *       16-bit words, else int32) the masked prefix score of the query (query_words[s]: its word for channel
 *       channels[s]) over the n_channels channels live in both: prefix_bits - 2 * popcount(differing sign bits).
 *   crosslayer_top_scores: ids of the k largest scores (int16 or int32, score_bits) by decreasing score, ties to the
 *       smaller id, skipping entries equal to `excluded`; every other score must lie in [low, -low]. *out_count
 *       receives how many ids were written (< k when fewer are not excluded). */
CROSSLAYER_API crosslayer_status crosslayer_prefix_scores(const void* table, int word_bits, int64_t n_items,
                                                          int64_t dk, const uint64_t* query_words,
                                                          const int32_t* channels, int64_t n_channels,
                                                          int prefix_bits, void* scores, int num_threads);
CROSSLAYER_API crosslayer_status crosslayer_top_scores(const void* scores, int score_bits, int64_t n, int32_t low,
                                                       int32_t excluded, int64_t k, int64_t* out_ids,
                                                       int64_t* out_count);

/* ---- code files (.xlc) ------------------------------------------------------------------------------------------ */
typedef struct crosslayer_codes crosslayer_codes; /* opaque; owns its bits, channel_mean, identity and keys */
/* identity: NULL/"" or <= 16 ASCII chars; keys: NULL (no key block) or [n] UTF-8 strings (NULL entry: null key);
 * key_lengths: NULL (NUL-terminated keys) or [n] byte lengths. */
CROSSLAYER_API crosslayer_status crosslayer_codes_write(const char* path, const uint64_t* bits,
                                                        const float* channel_mean, int64_t n, int64_t dk, int64_t dt,
                                                        const char* identity, const char* const* keys,
                                                        const int64_t* key_lengths);
/* crosslayer_codes_write for codes of `layout` (a crosslayer_layout); bits [n][image words of that layout]. */
CROSSLAYER_API crosslayer_status crosslayer_codes_write_layout(const char* path, int layout, const uint64_t* bits,
                                                               const float* channel_mean, int64_t n, int64_t dk,
                                                               int64_t dt, const char* identity,
                                                               const char* const* keys, const int64_t* key_lengths);
/* On success *out is a new object; on failure *out is NULL. */
CROSSLAYER_API crosslayer_status crosslayer_codes_read(const char* path, crosslayer_codes** out);
CROSSLAYER_API void crosslayer_codes_free(crosslayer_codes* codes); /* NULL is allowed */
CROSSLAYER_API int64_t crosslayer_codes_n(const crosslayer_codes* codes);
CROSSLAYER_API int64_t crosslayer_codes_dk(const crosslayer_codes* codes);
CROSSLAYER_API int64_t crosslayer_codes_dt(const crosslayer_codes* codes);
/* The layout of the file's bits (a crosslayer_layout; version 3 files are 2-plane). */
CROSSLAYER_API int crosslayer_codes_layout(const crosslayer_codes* codes);
/* In the file's layout: [n][dk][2][words] or compact [n][CROSSLAYER_COMPACT_WORDS_PER_IMAGE(dk, dt)]. */
CROSSLAYER_API const uint64_t* crosslayer_codes_bits(const crosslayer_codes* codes);
CROSSLAYER_API const float* crosslayer_codes_channel_mean(const crosslayer_codes* codes);  /* [n][dk] */
/* The encoder identity the file records; NULL when it records none. Valid until crosslayer_codes_free. */
CROSSLAYER_API const char* crosslayer_codes_identity(const crosslayer_codes* codes);
/* 1 when the file has a key block (n keys, possibly null), else 0. */
CROSSLAYER_API int crosslayer_codes_has_keys(const crosslayer_codes* codes);
/* Key `index` (UTF-8, NUL-terminated) and its byte length in *length (length may be NULL); NULL (and *length 0) for
 * a null key, a file without keys or an index outside [0, n). Valid until crosslayer_codes_free. */
CROSSLAYER_API const char* crosslayer_codes_key(const crosslayer_codes* codes, int64_t index, int64_t* length);

/* ---- image preparation: one image's network input (crosslayer/prepare_image.h has the full contract) ------------
 *   pixels: height x width x 3 uint8 RGB, element (y, x, c) at pixels + y*row_stride + x*pixel_stride +
 *   c*channel_stride (byte strides, any sign). Resized to side x side by `policy` (square stretches; center-crop
 *   scales the shorter side to side and cuts the middle; pad scales the longer side to side onto a canvas of
 *   fill[3]) with exactly Pillow's Image.resize(BILINEAR) integers, then normalised: out float32 [3][side][side] =
 *   float(v) * scale[c] - offset[c] in float32 (no fused multiply-add), bit for bit Python's images.normalize.
 *   out_resized (uint8 [side][side][3]) receives the resized pixels; either output may be NULL, not both.
 *   path: a crosslayer_prepare_path (AUTO: the fastest this CPU supports; all give the same result). Runs on the
 *   calling thread only. */
typedef enum crosslayer_resize_policy {
  CROSSLAYER_RESIZE_SQUARE = 0,
  CROSSLAYER_RESIZE_CENTER_CROP = 1,
  CROSSLAYER_RESIZE_PAD = 2
} crosslayer_resize_policy;
typedef enum crosslayer_prepare_path {
  CROSSLAYER_PREPARE_AUTO = 0,
  CROSSLAYER_PREPARE_SCALAR = 1,
  CROSSLAYER_PREPARE_AVX512 = 2
} crosslayer_prepare_path;
CROSSLAYER_API crosslayer_status crosslayer_prepare_image(const uint8_t* pixels, int64_t height, int64_t width,
                                                          int64_t row_stride, int64_t pixel_stride,
                                                          int64_t channel_stride, int64_t side, int policy,
                                                          const uint8_t* fill, const float* scale,
                                                          const float* offset, float* out, uint8_t* out_resized,
                                                          int path);

#ifdef __cplusplus
}
#endif

#endif /* CROSSLAYER_CROSSLAYER_H */
