#include <omp.h>

#include "bindings.h"
#include "crosslayer/popcount.h"

namespace py = pybind11;

namespace crosslayer::python {

void describe_build(py::dict& info) {
  info["version"] = CROSSLAYER_VERSION;
  info["openmp_max_threads"] = omp_get_max_threads();
  info["popcount"] = popcount_path();
#ifdef CROSSLAYER_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = CROSSLAYER_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
}

}  // namespace crosslayer::python

PYBIND11_MODULE(_core, m) {
  m.doc() = "crosslayer native core (C++/CUDA kernels). Use the Python API in `crosslayer`, not this module.";
  crosslayer::python::register_pool(m);
  crosslayer::python::register_search(m);
  crosslayer::python::register_cuda(m);
  m.def("build_info", [] {
    py::dict info;
    crosslayer::python::describe_build(info);
    return info;
  });
}
