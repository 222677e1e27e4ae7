#include <string>

#include "bindings.h"
#include "crosslayer/crosslayer.h"

namespace py = pybind11;

namespace crosslayer::python {

void describe_build(py::dict& info) {
  // libcrosslayer's own description, "key=value;key=value": one source for both the C and the Python side.
  const std::string text = crosslayer_build_info();
  for (std::size_t begin = 0; begin < text.size();) {
    std::size_t end = text.find(';', begin);
    if (end == std::string::npos) end = text.size();
    const std::string pair = text.substr(begin, end - begin);
    const std::size_t eq = pair.find('=');
    const std::string key = pair.substr(0, eq), value = eq == std::string::npos ? "" : pair.substr(eq + 1);
    if (key == "openmp_max_threads" || key == "api") {
      info[key.c_str()] = std::stoi(value);
    } else {
      info[key.c_str()] = value;
    }
    begin = end + 1;
  }
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
  crosslayer::python::register_prefix_scan(m);
  crosslayer::python::register_prepare_image(m);
  crosslayer::python::register_cuda(m);
  m.def("build_info", [] {
    py::dict info;
    crosslayer::python::describe_build(info);
    return info;
  });
}
