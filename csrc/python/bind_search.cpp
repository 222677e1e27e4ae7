// Bindings for gram_cpu, search_cpu and the popcount path switch. Arguments arrive validated by
// crosslayer/search.py (types, shapes, k, channel selection); the checks here only guard the raw-pointer contract.
#include <pybind11/numpy.h>

#include <stdexcept>
#include <string>

#include "bindings.h"
#include "crosslayer/codes.h"
#include "crosslayer/popcount.h"
#include "crosslayer/search.h"

namespace py = pybind11;

namespace crosslayer::python {
namespace {

using WordArray = py::array_t<std::uint64_t, py::array::c_style>;
using Int32Array = py::array_t<std::int32_t, py::array::c_style>;
using Int64Array = py::array_t<std::int64_t, py::array::c_style>;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

CodeMatrix as_code_matrix(const WordArray& bits, std::int64_t dt, const char* name) {
  require(dt >= 1 && dt < (std::int64_t{1} << 40), "dt must be in [1, 2^40)");  // before any arithmetic on it
  require(bits.ndim() == 4 && bits.shape(2) == kPlanes && bits.shape(3) == words_per_plane(dt),
          std::string(name) + " must be (n, Dk, 2, ceil(Dt/64)) uint64");
  CodeMatrix m;
  m.bits = bits.data();
  m.n = bits.shape(0);
  m.dk = bits.shape(1);
  m.dt = dt;
  return m;
}

// Outputs are written in place, so they must be exactly the caller's array: a non-const array_t parameter would let
// pybind11 convert a strided, Fortran-order or other-dtype array into a temporary and the results would vanish.
template <typename Array>
Array output_array(const py::object& value, const char* what) {
  require(py::isinstance<Array>(value), what);
  return py::reinterpret_borrow<Array>(value);
}

void gram_cpu_py(const WordArray& a_bits, py::object b_bits, std::int64_t dt, py::object out_object, int num_threads) {
  Int32Array out = output_array<Int32Array>(out_object, "out must be a C-contiguous int32 array");
  GramArgs args;
  args.a = as_code_matrix(a_bits, dt, "a");
  WordArray b_arr;
  if (b_bits.is_none()) {
    args.b = args.a;
  } else {
    b_arr = b_bits.cast<WordArray>();
    args.b = as_code_matrix(b_arr, dt, "b");
  }
  require(out.ndim() == 2 && out.shape(0) == args.a.n && out.shape(1) == args.b.n, "out must be (len(a), len(b)) int32");
  args.out = out.mutable_data();
  args.num_threads = num_threads;
  const char* err;
  {
    py::gil_scoped_release release;
    err = gram_cpu(args);
  }
  require(err[0] == '\0', err);
}

void search_cpu_py(const WordArray& query_bits, const WordArray& database_bits, std::int64_t dt,
                   const Int32Array& channels, std::int64_t k, std::int64_t id_base, bool merge_with_existing,
                   py::object out_scores_object, py::object out_ids_object, int num_threads) {
  Int32Array out_scores = output_array<Int32Array>(out_scores_object, "out_scores must be a C-contiguous int32 array");
  Int64Array out_ids = output_array<Int64Array>(out_ids_object, "out_ids must be a C-contiguous int64 array");
  SearchArgs args;
  args.queries = as_code_matrix(query_bits, dt, "queries");
  args.database = as_code_matrix(database_bits, dt, "database");
  const std::int64_t nq = args.queries.n;
  require(channels.ndim() == 2 && channels.shape(0) == nq, "channels must be (n_queries, n_channels) int32");
  require(out_scores.ndim() == 2 && out_scores.shape(0) == nq && out_scores.shape(1) == k, "out_scores must be (n_queries, k) int32");
  require(out_ids.ndim() == 2 && out_ids.shape(0) == nq && out_ids.shape(1) == k, "out_ids must be (n_queries, k) int64");
  args.channels = channels.data();
  args.n_channels = channels.shape(1);
  args.k = k;
  args.id_base = id_base;
  args.merge_with_existing = merge_with_existing;
  args.out_scores = out_scores.mutable_data();
  args.out_ids = out_ids.mutable_data();
  args.num_threads = num_threads;
  const char* err;
  {
    py::gil_scoped_release release;
    err = search_cpu(args);
  }
  require(err[0] == '\0', err);
}

}  // namespace

void register_search(py::module_& m) {
  m.def("gram_cpu", &gram_cpu_py, py::arg("a_bits"), py::arg("b_bits"), py::arg("dt"), py::arg("out"),
        py::arg("num_threads") = 0, "Ternary Gram matrix into a preallocated int32 out (crosslayer/search.h).");
  m.def("search_cpu", &search_cpu_py, py::arg("query_bits"), py::arg("database_bits"), py::arg("dt"),
        py::arg("channels"), py::arg("k"), py::arg("id_base"), py::arg("merge_with_existing"), py::arg("out_scores"),
        py::arg("out_ids"), py::arg("num_threads") = 0, "Masked ternary top-k search (crosslayer/search.h).");
  m.def("popcount_path", [] { return std::string(popcount_path()); }, "The popcount path the CPU kernels use.");
  m.def("popcount_paths", [] {
    py::list names;
    for (int i = 0; i < popcount_path_count(); ++i) names.append(popcount_path_name(i));
    return names;
  }, "Popcount paths this CPU supports, fastest first.");
  m.def("set_popcount_path", [](const std::string& name) {
    const char* err = set_popcount_path(name.c_str());
    require(err[0] == '\0', "popcount path '" + name + "': " + err);
  }, py::arg("name"), "Forces a popcount path (tests, benchmarks).");
}

}  // namespace crosslayer::python
