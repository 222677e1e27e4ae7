#include "crosslayer/blas.h"

namespace crosslayer::blas {

void use_single_threaded_blas() {
  // Checked on every call, not once: anything in the process (threadpoolctl, numpy code sharing this OpenBLAS) may
  // raise the count later, and then every OpenMP worker's sgemm would start its own BLAS threads. Reading it is cheap.
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

}  // namespace crosslayer::blas
