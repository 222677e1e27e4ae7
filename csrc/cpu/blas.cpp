#include "crosslayer/blas.h"

#if defined(CROSSLAYER_BLAS_SYSTEM) && defined(CROSSLAYER_HAVE_OPENBLAS_THREADS)
extern "C" {
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
}
#endif

namespace crosslayer::blas {

void use_single_threaded_blas() {
  // Checked on every call, not once: anything in the process (threadpoolctl, numpy code sharing this OpenBLAS) may
  // raise the count later, and then every OpenMP worker's sgemm would start its own BLAS threads. Reading it is cheap.
#if !defined(CROSSLAYER_BLAS_SYSTEM)
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
#elif defined(CROSSLAYER_HAVE_OPENBLAS_THREADS)
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
#else
  // A CBLAS without OpenBLAS's thread control: its own threading (e.g. OMP_NUM_THREADS for an OpenMP BLAS) applies.
#endif
}

}  // namespace crosslayer::blas
