// Each operation family registers its Python bindings from its own file; module.cpp calls them all.
// This is the only layer that knows pybind11: everything below takes plain structs and raw pointers.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "crosslayer/crosslayer.h"

namespace crosslayer::python {

void register_pool(pybind11::module_& m);
void register_search(pybind11::module_& m);
void register_prefix_scan(pybind11::module_& m);
void register_prepare_image(pybind11::module_& m);
// pool_cuda / gram_cuda / search_cuda on raw device addresses; registers nothing in a CPU-only build.
void register_cuda(pybind11::module_& m);
inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// A failed C API call becomes ValueError with the library's message (as the C++ kernels' errors always did).
inline void require_ok(crosslayer_status status) {
  if (status == CROSSLAYER_OUT_OF_MEMORY) throw std::bad_alloc();
  if (status != CROSSLAYER_OK) throw std::invalid_argument(crosslayer_last_error());
}

// Adds entries to the dict returned by _core.build_info().
void describe_build(pybind11::dict& info);

}  // namespace crosslayer::python
