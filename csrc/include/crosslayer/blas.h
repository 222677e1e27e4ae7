// crosslayer/blas.h — the one place that names the BLAS (a build choice, CMake's CROSSLAYER_BLAS). The
// scipy-openblas32 wheel prefixes its symbols with `scipy_`; a system CBLAS (CROSSLAYER_BLAS_SYSTEM) does not.
// Everything else in the core calls these wrappers (row-major, float32, 32-bit ints).
#pragma once
#include <cblas.h>

#ifdef CROSSLAYER_BLAS_SYSTEM
#define CROSSLAYER_CBLAS_SGEMM cblas_sgemm
#else
#define CROSSLAYER_CBLAS_SGEMM scipy_cblas_sgemm
#endif

namespace crosslayer::blas {

// C[m][n] = alpha * op(A) op(B) + beta * C, row-major.
inline void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                  const float* b, int ldb, float beta, float* c, int ldc) {
  CROSSLAYER_CBLAS_SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n,
                    k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The core parallelises over images/channel blocks itself; BLAS runs single-threaded inside each worker so the
// two thread pools never oversubscribe the cores. Idempotent.
void use_single_threaded_blas();

}  // namespace crosslayer::blas
