// crosslayer/blas.h — the one place that names the BLAS. The scipy-openblas32 wheel prefixes its symbols with
// `scipy_`; everything else in the core calls these wrappers (row-major, float32, 32-bit ints).
#pragma once
#include <cblas.h>

namespace crosslayer::blas {

// C[m][n] = alpha * op(A) op(B) + beta * C, row-major.
inline void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                  const float* b, int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n,
                    k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The core parallelises over images/channel blocks itself; BLAS runs single-threaded inside each worker so the
// two thread pools never oversubscribe the cores. Idempotent.
void use_single_threaded_blas();

}  // namespace crosslayer::blas
