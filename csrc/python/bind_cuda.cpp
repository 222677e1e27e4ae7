// Bindings of the CUDA kernels. Python (crosslayer/_device.py) reads each array's __cuda_array_interface__,
// validates dtype, shape and contiguity, allocates the outputs with the caller's framework and passes raw device
// addresses and the caller's stream as integers, so the core never links a framework. Compiled to nothing in a
// CPU-only build (build_info()["cuda"] tells Python which).
#include "bindings.h"

#ifdef CROSSLAYER_WITH_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "crosslayer/pool.h"
#include "crosslayer/search.h"

namespace py = pybind11;

namespace crosslayer::python {
namespace {

template <typename T>
T* device_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Runs `call` with `device` current (the arrays' device), restoring the caller's device afterwards.
template <typename Call>
void on_device(int device, Call&& call) {
  const char* err = nullptr;
  std::string cuda_failure;
  {
    py::gil_scoped_release release;
    int previous = 0;
    cudaError_t status = cudaGetDevice(&previous);
    if (status == cudaSuccess && previous != device) status = cudaSetDevice(device);
    if (status != cudaSuccess) {
      cuda_failure = std::string("crosslayer CUDA: cannot select device ") + std::to_string(device) + ": " +
                     cudaGetErrorString(status);
    } else {
      err = call();
      if (previous != device) cudaSetDevice(previous);
    }
  }
  if (!cuda_failure.empty()) throw std::runtime_error(cuda_failure);
  if (err && err[0] != '\0') {
    const std::string message(err);
    // Argument problems are the caller's (ValueError); anything a CUDA call reported is a RuntimeError.
    if (message.rfind("CUDA failure: ", 0) == 0) throw std::runtime_error(message);
    throw std::invalid_argument(message);
  }
}

void pool_cuda_py(std::uintptr_t local, std::uintptr_t guidance, std::int64_t n, std::int64_t dt_in, std::int64_t dk,
                  std::int64_t positions, std::int64_t dt, std::uintptr_t pca_mean, std::uintptr_t pca_proj,
                  int input_type, bool codes, std::uintptr_t out_float, std::uintptr_t out_bits,
                  std::uintptr_t channel_mean, std::uintptr_t stream, int device) {
  if (input_type < 0 || input_type > 2) throw std::invalid_argument("pool_cuda: input_type must be 0, 1 or 2");
  PoolArgs args;
  args.shape = PoolShape{n, dt_in, dt, dk, positions};
  args.local = device_pointer<const float>(local);
  args.guidance = device_pointer<const float>(guidance);
  args.pca_mean = device_pointer<const float>(pca_mean);
  args.pca_proj = device_pointer<const float>(pca_proj);
  args.input_type = static_cast<PoolInputType>(input_type);
  args.output = codes ? PoolOutput::Codes : PoolOutput::Float;
  args.out_float = device_pointer<float>(out_float);
  args.out_bits = device_pointer<std::uint64_t>(out_bits);
  args.channel_mean = device_pointer<float>(channel_mean);
  on_device(device, [&] { return pool_cuda(args, reinterpret_cast<void*>(stream)); });
}

CodeLayout code_layout(int layout) {
  require(layout == 0 || layout == 1, "layout must be 0 (2-plane) or 1 (compact)");
  return layout == 1 ? CodeLayout::kCompact : CodeLayout::kTwoPlane;
}

void gram_cuda_py(std::uintptr_t a, std::int64_t a_n, std::uintptr_t b, std::int64_t b_n, std::int64_t dk,
                  std::int64_t dt, std::uintptr_t out, std::uintptr_t stream, int device, int layout) {
  GramArgs args;
  args.a = CodeMatrix{device_pointer<const std::uint64_t>(a), a_n, dk, dt, code_layout(layout)};
  args.b = CodeMatrix{device_pointer<const std::uint64_t>(b), b_n, dk, dt, code_layout(layout)};
  args.out = device_pointer<std::int32_t>(out);
  on_device(device, [&] { return gram_cuda(args, reinterpret_cast<void*>(stream)); });
}

void search_cuda_py(std::uintptr_t queries, std::int64_t n_queries, std::uintptr_t database, std::int64_t n_database,
                    std::int64_t dk, std::int64_t dt, std::uintptr_t channels, std::int64_t n_channels, std::int64_t k,
                    std::int64_t id_base, bool merge_with_existing, std::uintptr_t out_scores, std::uintptr_t out_ids,
                    std::uintptr_t stream, int device, int layout) {
  SearchArgs args;
  args.queries = CodeMatrix{device_pointer<const std::uint64_t>(queries), n_queries, dk, dt, code_layout(layout)};
  args.database = CodeMatrix{device_pointer<const std::uint64_t>(database), n_database, dk, dt, code_layout(layout)};
  args.channels = device_pointer<const std::int32_t>(channels);
  args.n_channels = n_channels;
  args.k = k;
  args.id_base = id_base;
  args.merge_with_existing = merge_with_existing;
  args.out_scores = device_pointer<std::int32_t>(out_scores);
  args.out_ids = device_pointer<std::int64_t>(out_ids);
  on_device(device, [&] { return search_cuda(args, reinterpret_cast<void*>(stream)); });
}

}  // namespace

void register_cuda(py::module_& m) {
  m.def("pool_cuda", &pool_cuda_py, py::arg("local"), py::arg("guidance"), py::arg("n"), py::arg("dt_in"),
        py::arg("dk"), py::arg("positions"), py::arg("dt"), py::arg("pca_mean"), py::arg("pca_proj"),
        py::arg("input_type"), py::arg("codes"), py::arg("out_float"), py::arg("out_bits"), py::arg("channel_mean"),
        py::arg("stream"), py::arg("device"),
        "Fused cross-layer pooling on device addresses (see csrc/include/crosslayer/pool.h).");
  m.def("gram_cuda", &gram_cuda_py, py::arg("a"), py::arg("a_n"), py::arg("b"), py::arg("b_n"), py::arg("dk"),
        py::arg("dt"), py::arg("out"), py::arg("stream"), py::arg("device"), py::arg("layout") = 0,
        "Ternary code Gram matrix on device addresses (see csrc/include/crosslayer/search.h); layout 1: compact.");
  m.def("search_cuda", &search_cuda_py, py::arg("queries"), py::arg("n_queries"), py::arg("database"),
        py::arg("n_database"), py::arg("dk"), py::arg("dt"), py::arg("channels"), py::arg("n_channels"), py::arg("k"),
        py::arg("id_base"), py::arg("merge_with_existing"), py::arg("out_scores"), py::arg("out_ids"),
        py::arg("stream"), py::arg("device"), py::arg("layout") = 0,
        "Masked ternary top-k search on device addresses (see csrc/include/crosslayer/search.h); layout 1: compact.");
}

}  // namespace crosslayer::python

#else

namespace crosslayer::python {
void register_cuda(pybind11::module_&) {}
}  // namespace crosslayer::python

#endif
