#include "crosslayer/blas.h"

#include <mutex>

namespace crosslayer::blas {

void use_single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

}  // namespace crosslayer::blas
