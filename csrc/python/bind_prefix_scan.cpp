// Bindings for the coarse stage's C API (crosslayer_prefix_scores, crosslayer_top_scores). Arguments arrive shaped by
// crosslayer/retrieval/prefix_scan.py; the checks here guard the raw-pointer contract.
#include <pybind11/numpy.h>

#include <string>

#include "bindings.h"
#include "crosslayer/crosslayer.h"

namespace py = pybind11;

namespace crosslayer::python {
namespace {

using Int32Array = py::array_t<std::int32_t, py::array::c_style>;
using Int64Array = py::array_t<std::int64_t, py::array::c_style>;
using WordArray = py::array_t<std::uint64_t, py::array::c_style>;

// Scores are accumulated in place: the caller's exact array, C-contiguous, of the dtype the table's words need.
py::array checked_scores(const py::object& value, int bits, std::int64_t n) {
  require(py::isinstance<py::array>(value), "scores must be a numpy array");
  auto array = py::reinterpret_borrow<py::array>(value);
  const bool dtype_ok = bits == 16 ? array.dtype().is(py::dtype::of<std::int16_t>())
                                   : array.dtype().is(py::dtype::of<std::int32_t>());
  require(dtype_ok, bits == 16 ? "scores must be int16 (16-bit table words)" : "scores must be int32");
  require(array.ndim() == 1 && array.shape(0) == n, "scores must be 1-D with one entry per item");
  require((array.flags() & py::array::c_style) != 0 && array.writeable(), "scores must be C-contiguous and writable");
  return array;
}

void prefix_scores_py(const py::array& table, const WordArray& query_words, const Int32Array& channels,
                      int prefix_bits, py::object scores_object, int num_threads) {
  require(table.ndim() == 2 && (table.flags() & py::array::c_style) != 0, "table must be a C-contiguous (dk, n) array");
  const auto kind = table.dtype();
  int word_bits = 0;
  if (kind.is(py::dtype::of<std::uint16_t>())) word_bits = 16;
  if (kind.is(py::dtype::of<std::uint32_t>())) word_bits = 32;
  if (kind.is(py::dtype::of<std::uint64_t>())) word_bits = 64;
  require(word_bits != 0, "table must hold uint16, uint32 or uint64 words");
  require(query_words.ndim() == 1 && channels.ndim() == 1 && query_words.shape(0) == channels.shape(0),
          "query_words and channels must be 1-D of one length");
  py::array scores = checked_scores(scores_object, word_bits == 16 ? 16 : 32, table.shape(1));
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    status = crosslayer_prefix_scores(table.data(), word_bits, table.shape(1), table.shape(0), query_words.data(),
                                      channels.data(), channels.shape(0), prefix_bits, scores.mutable_data(),
                                      num_threads);
  }
  require_ok(status);
}

Int64Array top_scores_py(const py::array& scores, std::int64_t k, std::int32_t low, std::int32_t excluded) {
  int bits = 0;
  if (scores.dtype().is(py::dtype::of<std::int16_t>())) bits = 16;
  if (scores.dtype().is(py::dtype::of<std::int32_t>())) bits = 32;
  require(bits != 0 && scores.ndim() == 1 && (scores.flags() & py::array::c_style) != 0,
          "scores must be a C-contiguous 1-D int16 or int32 array");
  require(k >= 0, "k must be >= 0");
  Int64Array ids(std::min<std::int64_t>(k, scores.shape(0)));
  std::int64_t count = 0;
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    status = crosslayer_top_scores(scores.data(), bits, scores.shape(0), low, excluded, ids.shape(0),
                                   ids.mutable_data(), &count);
  }
  require_ok(status);
  return Int64Array(py::array(ids)[py::slice(0, count, 1)]);
}

}  // namespace

void register_prefix_scan(py::module_& m) {
  m.def("prefix_scores", &prefix_scores_py, py::arg("table"), py::arg("query_words"), py::arg("channels"),
        py::arg("prefix_bits"), py::arg("scores"), py::arg("num_threads") = 0,
        "Adds one query's masked prefix scores over a (dk, n) channel-major table to scores (crosslayer/prefix_scan.h).");
  m.def("top_scores", &top_scores_py, py::arg("scores"), py::arg("k"), py::arg("low"), py::arg("excluded"),
        "Ids of the k largest scores, ties to the smaller id, skipping `excluded` (crosslayer/prefix_scan.h).");
}

}  // namespace crosslayer::python
