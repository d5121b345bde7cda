// The call contract between Python and the kernels: every params struct of csrc/include/zaya_rt/*.h is bound
// to Python as a class whose attributes are the struct's fields, by name. Python fills one field by field
// (pointers as integer addresses, DType fields as dtype codes) and passes it with a device to the entry point,
// so no argument travels by position. Each family's csrc/bindings_<family>.cpp binds its structs with
// ParamsClass; python/zaya_rt/ops/<family>.py holds the one builder per struct.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_args.h"
#include "dispatch.h"
#include "zaya_rt/common.h"

// Every csrc/bindings_<family>.cpp includes this header alone and spells pybind11 `py`.
namespace py = pybind11;

namespace zaya_rt::bindings {

template <typename S>
class ParamsClass {
 public:
  // A fresh instance has every field zero (null pointers, dtype code 0, sizes 0). `fields` lists the bound
  // names, so a test can check that a builder sets each of them.
  ParamsClass(py::module_& m, const char* name, const char* doc) : cls_(m, name, doc) {
    cls_.def(py::init([] { return S{}; }));
    cls_.attr("fields") = fields_;
  }

  // A pointer field, set and read as an integer address (0 = none).
  template <typename T>
  ParamsClass& ptr(const char* name, T* S::*field) {
    fields_.append(name);
    cls_.def_property(
        name, [field](const S& s) { return reinterpret_cast<Ptr>(s.*field); },
        [field](S& s, Ptr p) { s.*field = reinterpret_cast<T*>(p); });
    return *this;
  }

  // A DType field, set and read as its integer code (python/zaya_rt/ops/_lib.DTYPE_CODES).
  ParamsClass& dtype(const char* name, DType S::*field) {
    fields_.append(name);
    cls_.def_property(
        name, [field](const S& s) { return static_cast<int>(s.*field); },
        [field](S& s, int code) { s.*field = dt(code); });
    return *this;
  }

  // A number or flag.
  template <typename T>
  ParamsClass& value(const char* name, T S::*field) {
    fields_.append(name);
    cls_.def_readwrite(name, field);
    return *this;
  }

 private:
  py::class_<S> cls_;
  py::list fields_;
};

// Binds the entry point `name(params, dev_type, dev_index, stream)`: runs fn(params, device) without the GIL.
template <typename S>
void def_entry(py::module_& m, const char* name, void (*fn)(const S&, const Device&), const char* doc) {
  m.def(
      name,
      [fn](const S& p, int dev_type, int dev_index, Ptr stream) {
        const Device d = dev(dev_type, dev_index, stream);
        py::gil_scoped_release nogil;
        fn(p, d);
      },
      py::arg("params"), py::arg("dev_type"), py::arg("dev_index"), py::arg("stream"), doc);
}

// Binds the size query `name(params, dev_type)` (workspace bytes and the like): the sizes come from params.
template <typename S>
void def_size(py::module_& m, const char* name, int64_t (*fn)(const S&, const Device&), const char* doc) {
  m.def(
      name, [fn](const S& p, int dev_type) { return fn(p, dev(dev_type, 0, 0)); }, py::arg("params"),
      py::arg("dev_type"), doc);
}

}  // namespace zaya_rt::bindings
