/* encode_codes: sign codes of raw activations through libcrosslayer's C API.
 *
 *   encode_codes LOCAL.f32 GUIDANCE.f32 N DT DK H W OUT.bits
 *
 * LOCAL.f32 holds float32 (N, DT, H, W) and GUIDANCE.f32 float32 (N, DK, H, W), C order, little-endian, no header
 * (NCHW activations of two conv layers). OUT.bits receives the uint64 bits (N, DK, 2, ceil(DT/64)) in the layout of
 * Python's crosslayer.pool(local, guidance, output="codes").bits. No PCA. Exits 1 with a message on bad input.
 */
#include <crosslayer/crosslayer.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char* message, const char* detail) {
  fprintf(stderr, "encode_codes: %s%s%s\n", message, detail ? ": " : "", detail ? detail : "");
  return 1;
}

/* A positive integer argument, or 0 when `text` is not one. */
static int64_t positive(const char* text) {
  char* end = NULL;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < 1 || value > ((int64_t)1 << 40)) return 0;
  return (int64_t)value;
}

/* Reads exactly `count` floats from `path` into a new buffer; NULL (with a message) when the size differs. */
static float* read_floats(const char* path, int64_t count, const char* name) {
  FILE* file = fopen(path, "rb");
  if (!file) {
    fprintf(stderr, "encode_codes: %s: cannot open %s: %s\n", name, path, strerror(errno));
    return NULL;
  }
  float* data = malloc((size_t)count * sizeof(float) + 1);
  size_t got = data ? fread(data, sizeof(float), (size_t)count, file) : 0;
  int extra = fgetc(file) != EOF;
  fclose(file);
  if (!data || got != (size_t)count || extra) {
    fprintf(stderr, "encode_codes: %s: %s does not hold exactly %lld float32 values\n", name, path, (long long)count);
    free(data);
    return NULL;
  }
  return data;
}

int main(int argc, char** argv) {
  if (argc != 9) return fail("usage: encode_codes LOCAL.f32 GUIDANCE.f32 N DT DK H W OUT.bits", NULL);
  const char* names[] = {"N", "DT", "DK", "H", "W"};
  int64_t dims[5];
  for (int i = 0; i < 5; ++i) {
    dims[i] = positive(argv[3 + i]);
    if (dims[i] == 0) {
      fprintf(stderr, "encode_codes: %s: expected a positive integer, got '%s'\n", names[i], argv[3 + i]);
      return 1;
    }
  }
  const int64_t n = dims[0], dt = dims[1], dk = dims[2], positions = dims[3] * dims[4];
  float* local = read_floats(argv[1], n * dt * positions, "LOCAL");
  float* guidance = local ? read_floats(argv[2], n * dk * positions, "GUIDANCE") : NULL;
  const size_t words = (size_t)(n * dk * 2 * CROSSLAYER_WORDS_PER_PLANE(dt));
  uint64_t* bits = guidance ? malloc(words * sizeof(uint64_t)) : NULL;
  int status = 1;
  if (bits) {
    if (crosslayer_pool_codes(local, guidance, n, dt, dk, positions, NULL, NULL, dt, bits, NULL, 0) != CROSSLAYER_OK) {
      fail("pooling failed", crosslayer_last_error());
    } else {
      FILE* out = fopen(argv[8], "wb");
      if (!out) {
        fail("cannot create OUT.bits", strerror(errno));
      } else {
        const int written = fwrite(bits, sizeof(uint64_t), words, out) == words;
        if (fclose(out) == 0 && written) {
          status = 0;
        } else {
          fail("writing OUT.bits failed", argv[8]);
          remove(argv[8]); /* no partial output */
        }
      }
    }
  } else if (guidance) {
    fail("out of memory", NULL);
  }
  free(bits);
  free(guidance);
  free(local);
  return status;
}
