// Binding for the C API's pooling (libcrosslayer, crosslayer/crosslayer.h). Arguments arrive validated by
// crosslayer/pooling.py (dtype, contiguity, shapes, finiteness); the checks here only guard the raw-pointer contract.
#include <pybind11/numpy.h>

#include <stdexcept>
#include <string>

#include "bindings.h"
#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/crosslayer.h"

namespace py = pybind11;

namespace crosslayer::python {
namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using WordArray = py::array_t<std::uint64_t, py::array::c_style>;

// The pooling's output buffer: float (n, Dk*Dt) when out_float is given, else codes in out_bits, whose number of
// axes says the layout: 4-d (n, Dk, 2, ceil(Dt/64)) 2-plane, 2-d (n, ceil(Dk/64) + Dk*ceil(Dt/64)) compact. The
// arrays keep the buffer alive while the kernel writes it.
struct PoolOutputs {
  FloatArray float_arr;
  WordArray bits_arr;
  float* float_data = nullptr;
  std::uint64_t* bits_data = nullptr;
  bool compact = false;
};

PoolOutputs pool_outputs(const py::object& out_float, const py::object& out_bits, std::int64_t n, std::int64_t dk,
                         std::int64_t dt) {
  PoolOutputs outputs;
  if (!out_float.is_none()) {
    require(py::isinstance<FloatArray>(out_float), "float output must be a C-contiguous float32 array");
    const FloatArray& floats = outputs.float_arr = out_float.cast<FloatArray>();
    require(floats.ndim() == 2 && floats.shape(0) == n && floats.shape(1) == dk * dt, "float output must be (n, Dk*Dt)");
    outputs.float_data = outputs.float_arr.mutable_data();
  } else {
    require(py::isinstance<WordArray>(out_bits), "code output must be a C-contiguous uint64 array");
    const WordArray& bits = outputs.bits_arr = out_bits.cast<WordArray>();
    outputs.compact = bits.ndim() == 2;
    if (outputs.compact) {
      require(bits.shape(0) == n && bits.shape(1) == compact_words_per_image(dk, dt),
              "compact code output must be (n, ceil(Dk/64) + Dk*ceil(Dt/64)), got (" + std::to_string(bits.shape(0)) +
                  ", " + std::to_string(bits.shape(1)) + ") for n=" + std::to_string(n) + ", Dk=" +
                  std::to_string(dk) + ", Dt=" + std::to_string(dt));
    } else {
      require(bits.ndim() == 4 && bits.shape(0) == n && bits.shape(1) == dk && bits.shape(2) == kPlanes &&
                  bits.shape(3) == words_per_plane(dt),
              "code output must be (n, Dk, 2, ceil(Dt/64)) (2-plane) or (n, ceil(Dk/64) + Dk*ceil(Dt/64)) (compact)");
    }
    outputs.bits_data = outputs.bits_arr.mutable_data();
  }
  return outputs;
}


void pool_cpu_py(const FloatArray& local, const FloatArray& guidance, py::object pca_mean, py::object pca_proj,
                 py::object out_float, py::object out_bits, py::object channel_mean, int num_threads) {
  require(local.ndim() == 4 && guidance.ndim() == 4, "local and guidance must be 4-d (n, C, H, W)");
  const std::int64_t n = local.shape(0), dt_in = local.shape(1), dk = guidance.shape(1);
  const std::int64_t positions = local.shape(2) * local.shape(3);
  require(guidance.shape(0) == n && guidance.shape(2) == local.shape(2) && guidance.shape(3) == local.shape(3),
          "guidance must match local in n, H, W");
  std::int64_t dt = dt_in;
  FloatArray mean_arr, proj_arr;
  const float* mean_data = nullptr;
  const float* proj_data = nullptr;
  require(pca_mean.is_none() == pca_proj.is_none(), "pca mean and projection go together (both or neither)");
  if (!pca_proj.is_none()) {
    mean_arr = pca_mean.cast<FloatArray>();
    proj_arr = pca_proj.cast<FloatArray>();
    require(proj_arr.ndim() == 2 && proj_arr.shape(0) == dt_in, "pca projection must be (Dt_in, Dt)");
    require(mean_arr.ndim() == 1 && mean_arr.shape(0) == dt_in, "pca mean must be (Dt_in,)");
    dt = proj_arr.shape(1);
    mean_data = mean_arr.data();
    proj_data = proj_arr.data();
  }
  FloatArray mean_out;
  float* mean_out_data = nullptr;
  const PoolOutputs outputs = pool_outputs(out_float, out_bits, n, dk, dt);
  float* const float_data = outputs.float_data;
  std::uint64_t* const bits_data = outputs.bits_data;
  if (!channel_mean.is_none()) {
    require(py::isinstance<FloatArray>(channel_mean), "channel_mean must be a C-contiguous float32 array");
    mean_out = channel_mean.cast<FloatArray>();
    require(mean_out.ndim() == 2 && mean_out.shape(0) == n && mean_out.shape(1) == dk, "channel_mean must be (n, Dk)");
    mean_out_data = mean_out.mutable_data();
  }
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    if (float_data) {
      status = crosslayer_pool_float(local.data(), guidance.data(), n, dt_in, dk, positions, mean_data, proj_data, dt,
                                     float_data, mean_out_data, num_threads);
    } else if (outputs.compact) {
      status = crosslayer_pool_compact(local.data(), guidance.data(), n, dt_in, dk, positions, mean_data, proj_data,
                                       dt, bits_data, mean_out_data, num_threads);
    } else {
      status = crosslayer_pool_codes(local.data(), guidance.data(), n, dt_in, dk, positions, mean_data, proj_data, dt,
                                     bits_data, mean_out_data, num_threads);
    }
  }
  require_ok(status);
}

void finish_pooled_py(const FloatArray& pooled, py::object out_float, py::object out_bits, int num_threads) {
  require(pooled.ndim() == 3, "pooled must be 3-d (n, Dk, Dt)");
  const std::int64_t n = pooled.shape(0), dk = pooled.shape(1), dt = pooled.shape(2);
  const PoolOutputs outputs = pool_outputs(out_float, out_bits, n, dk, dt);
  float* const float_data = outputs.float_data;
  std::uint64_t* const bits_data = outputs.bits_data;
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    if (float_data) {
      status = crosslayer_finish_pooled_float(pooled.data(), n, dk, dt, float_data, num_threads);
    } else if (outputs.compact) {
      status = crosslayer_finish_pooled_compact(pooled.data(), n, dk, dt, bits_data, num_threads);
    } else {
      status = crosslayer_finish_pooled_codes(pooled.data(), n, dk, dt, bits_data, num_threads);
    }
  }
  require_ok(status);
}

}  // namespace

void register_pool(py::module_& m) {
  m.def("pool_cpu", &pool_cpu_py, py::arg("local"), py::arg("guidance"), py::arg("pca_mean"), py::arg("pca_proj"),
        py::arg("out_float"), py::arg("out_bits"), py::arg("channel_mean"), py::arg("num_threads") = 0,
        "Fused cross-layer pooling into preallocated outputs (see csrc/include/crosslayer/crosslayer.h); 2-d out_bits "
        "take compact codes.");
  m.def("finish_pooled_cpu", &finish_pooled_py, py::arg("pooled"), py::arg("out_float"), py::arg("out_bits"),
        py::arg("num_threads") = 0,
        "The pooling's last step on P (n, Dk, Dt) computed elsewhere: L2 + signed sqrt, or sign packing.");
  m.def("sign_pack_path", [] { return std::string(crosslayer_sign_pack_path()); },
        "The sign packing path the pooling's codes use.");
  m.def("sign_pack_paths", [] {
    py::list names;
    for (int i = 0; i < crosslayer_sign_pack_path_count(); ++i) names.append(crosslayer_sign_pack_path_name(i));
    return names;
  }, "Sign packing paths this CPU supports, fastest first.");
  m.def("set_sign_pack_path", [](const std::string& name) {
    require_ok(crosslayer_set_sign_pack_path(name.c_str()));
  }, py::arg("name"), "Forces a sign packing path (tests, benchmarks).");
}

}  // namespace crosslayer::python
