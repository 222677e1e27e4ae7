// Binding for the C API's image preparation (crosslayer_prepare_image). Arguments arrive checked by
// crosslayer/images.py; the checks here guard the raw-pointer contract. The pixels may have any strides (a numpy
// view); the outputs are the caller's own arrays, written in place with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "bindings.h"
#include "crosslayer/crosslayer.h"

namespace py = pybind11;

namespace crosslayer::python {
namespace {

// The caller's exact array (never a converted copy), C-contiguous and writable, of `shape`.
template <typename T>
T* checked_output(const py::object& value, std::array<py::ssize_t, 3> shape, const char* what) {
  if (value.is_none()) return nullptr;
  require(py::isinstance<py::array>(value), std::string(what) + " must be a numpy array");
  auto array = py::reinterpret_borrow<py::array>(value);
  require(array.dtype().is(py::dtype::of<T>()), std::string(what) + " has the wrong dtype");
  require(array.ndim() == 3 && array.shape(0) == shape[0] && array.shape(1) == shape[1] && array.shape(2) == shape[2],
          std::string(what) + " has the wrong shape");
  require((array.flags() & py::array::c_style) != 0 && array.writeable(),
          std::string(what) + " must be C-contiguous and writable");
  return static_cast<T*>(array.mutable_data());
}

void prepare_image_py(const py::array& pixels, std::int64_t side, int policy, std::array<std::uint8_t, 3> fill,
                      std::array<float, 3> scale, std::array<float, 3> offset, const py::object& out,
                      const py::object& out_resized, int path) {
  require(pixels.dtype().is(py::dtype::of<std::uint8_t>()) && pixels.ndim() == 3 && pixels.shape(2) == 3,
          "pixels must be an (H, W, 3) uint8 array");
  require(side >= 1, "side must be >= 1");
  float* out_data = checked_output<float>(out, {3, side, side}, "out");
  std::uint8_t* resized_data = checked_output<std::uint8_t>(out_resized, {side, side, 3}, "out_resized");
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    status = crosslayer_prepare_image(static_cast<const std::uint8_t*>(pixels.data()), pixels.shape(0),
                                      pixels.shape(1), pixels.strides(0), pixels.strides(1), pixels.strides(2), side,
                                      policy, fill.data(), scale.data(), offset.data(), out_data, resized_data, path);
  }
  require_ok(status);
}

}  // namespace

void register_prepare_image(py::module_& m) {
  m.def("prepare_image", &prepare_image_py, py::arg("pixels"), py::arg("side"), py::arg("policy"), py::arg("fill"),
        py::arg("scale"), py::arg("offset"), py::arg("out"), py::arg("out_resized"), py::arg("path") = 0,
        "Resizes (Pillow BILINEAR, exactly) and normalises one image into out and/or out_resized "
        "(crosslayer/prepare_image.h).");
}

}  // namespace crosslayer::python
