// Bindings for the C API's gram, search and popcount path switch (libcrosslayer, crosslayer/crosslayer.h). Arguments
// arrive validated by crosslayer/search.py (types, shapes, k, channel selection); the checks here only guard the raw-pointer contract.
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

using WordArray = py::array_t<std::uint64_t, py::array::c_style>;
using Int32Array = py::array_t<std::int32_t, py::array::c_style>;
using Int64Array = py::array_t<std::int64_t, py::array::c_style>;

// Codes of either layout: 2-plane (n, Dk, 2, words), or compact (n, compact words) whose Dk the caller passes.
struct CodeBits {
  const WordArray& bits;
  std::int64_t dk;
  int layout;
};

CodeBits check_codes(const WordArray& bits, std::int64_t dk, std::int64_t dt, const char* name) {
  require(dt >= 1 && dt < (std::int64_t{1} << 40), "dt must be in [1, 2^40)");  // before any arithmetic on it
  if (bits.ndim() == 2) {
    require(dk >= 1 && dk < (std::int64_t{1} << 31) && bits.shape(1) == compact_words_per_image(dk, dt),
            std::string(name) + " must be (n, ceil(Dk/64) + Dk*ceil(Dt/64)) uint64 compact codes");
    return {bits, dk, CROSSLAYER_LAYOUT_COMPACT};
  }
  require(bits.ndim() == 4 && bits.shape(2) == kPlanes && bits.shape(3) == words_per_plane(dt),
          std::string(name) + " must be (n, Dk, 2, ceil(Dt/64)) uint64");
  require(dk < 0 || dk == bits.shape(1), std::string(name) + ": dk differs from the bits' channel axis");
  return {bits, bits.shape(1), CROSSLAYER_LAYOUT_TWO_PLANE};
}

// Outputs are written in place, so they must be exactly the caller's array: a non-const array_t parameter would let
// pybind11 convert a strided, Fortran-order or other-dtype array into a temporary and the results would vanish.
template <typename Array>
Array output_array(const py::object& value, const char* what) {
  require(py::isinstance<Array>(value), what);
  return py::reinterpret_borrow<Array>(value);
}

void gram_cpu_py(const WordArray& a_bits, py::object b_bits, std::int64_t dt, py::object out_object, int num_threads,
                 std::int64_t dk) {
  Int32Array out = output_array<Int32Array>(out_object, "out must be a C-contiguous int32 array");
  const CodeBits a = check_codes(a_bits, dk, dt, "a");
  WordArray b_arr;
  const std::uint64_t* b_data = nullptr;
  std::int64_t n_b = a_bits.shape(0);
  if (!b_bits.is_none()) {
    b_arr = b_bits.cast<WordArray>();
    const CodeBits b = check_codes(b_arr, a.dk, dt, "b");
    require(b.layout == a.layout, "a and b must have the same layout");
    require(b_arr.shape(1) == a_bits.shape(1), "a and b must have the same dk and dt");
    b_data = b_arr.data();
    n_b = b_arr.shape(0);
  }
  require(out.ndim() == 2 && out.shape(0) == a_bits.shape(0) && out.shape(1) == n_b, "out must be (len(a), len(b)) int32");
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    status = crosslayer_gram_layout(a.layout, a_bits.data(), a_bits.shape(0), b_data, n_b, a.dk, dt,
                                    out.mutable_data(), num_threads);
  }
  require_ok(status);
}

void search_cpu_py(const WordArray& query_bits, const WordArray& database_bits, std::int64_t dt,
                   const Int32Array& channels, std::int64_t k, std::int64_t id_base, bool merge_with_existing,
                   py::object out_scores_object, py::object out_ids_object, int num_threads, std::int64_t dk) {
  Int32Array out_scores = output_array<Int32Array>(out_scores_object, "out_scores must be a C-contiguous int32 array");
  Int64Array out_ids = output_array<Int64Array>(out_ids_object, "out_ids must be a C-contiguous int64 array");
  const CodeBits queries = check_codes(query_bits, dk, dt, "queries");
  const CodeBits database = check_codes(database_bits, queries.dk, dt, "database");
  require(queries.layout == database.layout, "queries and database must have the same layout");
  require(query_bits.shape(1) == database_bits.shape(1), "queries and database must have the same dk and dt");
  const std::int64_t nq = query_bits.shape(0);
  require(channels.ndim() == 2 && channels.shape(0) == nq, "channels must be (n_queries, n_channels) int32");
  require(out_scores.ndim() == 2 && out_scores.shape(0) == nq && out_scores.shape(1) == k, "out_scores must be (n_queries, k) int32");
  require(out_ids.ndim() == 2 && out_ids.shape(0) == nq && out_ids.shape(1) == k, "out_ids must be (n_queries, k) int64");
  crosslayer_status status;
  {
    py::gil_scoped_release release;
    status = crosslayer_search_layout(queries.layout, query_bits.data(), nq, database_bits.data(),
                                      database_bits.shape(0), queries.dk, dt, channels.data(), channels.shape(1), k,
                                      id_base, merge_with_existing ? 1 : 0, out_scores.mutable_data(),
                                      out_ids.mutable_data(), num_threads);
  }
  require_ok(status);
}

}  // namespace

void register_search(py::module_& m) {
  m.def("gram_cpu", &gram_cpu_py, py::arg("a_bits"), py::arg("b_bits"), py::arg("dt"), py::arg("out"),
        py::arg("num_threads") = 0, py::arg("dk") = -1,
        "Ternary Gram matrix into a preallocated int32 out (crosslayer/search.h); compact (2-D) bits need dk.");
  m.def("search_cpu", &search_cpu_py, py::arg("query_bits"), py::arg("database_bits"), py::arg("dt"),
        py::arg("channels"), py::arg("k"), py::arg("id_base"), py::arg("merge_with_existing"), py::arg("out_scores"),
        py::arg("out_ids"), py::arg("num_threads") = 0, py::arg("dk") = -1,
        "Masked ternary top-k search (crosslayer/search.h); compact (2-D) bits need dk.");
  m.def("popcount_path", [] { return std::string(crosslayer_popcount_path()); }, "The popcount path the CPU kernels use.");
  m.def("popcount_paths", [] {
    py::list names;
    for (int i = 0; i < crosslayer_popcount_path_count(); ++i) names.append(crosslayer_popcount_path_name(i));
    return names;
  }, "Popcount paths this CPU supports, fastest first.");
  m.def("set_popcount_path", [](const std::string& name) {
    require_ok(crosslayer_set_popcount_path(name.c_str()));
  }, py::arg("name"), "Forces a popcount path (tests, benchmarks).");
}

}  // namespace crosslayer::python
