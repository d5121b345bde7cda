// pybind11 functions of the runtime family (page operations, sampler); python/zaya_rt/ops/runtime.py and
// ops/sampling.py build these calls from torch tensors.
#include <pybind11/pybind11.h>

#include "bindings_args.h"

#include <cstdint>
#include <stdexcept>

#include "dispatch_runtime.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void kv_write(Ptr k_new, int64_t k_rs, Ptr v_new, int64_t v_rs, Ptr k_cache, Ptr v_cache, int64_t page_stride,
              int64_t token_stride, Ptr slots, int dtype, int64_t N, int64_t W, int64_t P, int64_t S, int dev_type,
              int dev_index, Ptr stream) {
  zaya_rt::KvWriteParams p{ptr(k_new), k_rs, ptr(v_new), v_rs, ptr(k_cache), ptr(v_cache), page_stride,
                           token_stride, ptr<const int32_t>(slots), dt(dtype), N, W, P, S};
  py::gil_scoped_release nogil;
  zaya_rt::kv_write(p, dev(dev_type, dev_index, stream));
}

void copy_pages(Ptr cache, int64_t layer_stride, int64_t page_stride, int64_t page_elems, Ptr src, Ptr dst,
                int dtype, int64_t L, int64_t P, int64_t n, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::CopyPagesParams p{ptr(cache), layer_stride, page_stride, page_elems, ptr<const int32_t>(src),
                             ptr<const int32_t>(dst), dt(dtype), L, P, n};
  py::gil_scoped_release nogil;
  zaya_rt::copy_pages(p, dev(dev_type, dev_index, stream));
}

void gather_tail(Ptr cache, int64_t page_stride, int64_t token_stride, Ptr block_table, int64_t bt_stride,
                 Ptr seq_lens, Ptr out, int dtype, int64_t B, int64_t M, int64_t P, int64_t S, int64_t W,
                 int64_t tau, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::GatherTailParams p{ptr(cache), page_stride, token_stride, ptr<const int32_t>(block_table), bt_stride,
                              ptr<const int32_t>(seq_lens), ptr(out), dt(dtype), B, M, P, S, W, tau};
  py::gil_scoped_release nogil;
  zaya_rt::gather_tail(p, dev(dev_type, dev_index, stream));
}

void sample_tokens(Ptr logits, int64_t row_stride, int dtype, Ptr temperature, Ptr top_k, Ptr top_p, Ptr min_p,
                   Ptr seed, Ptr step, Ptr out, int64_t B, int64_t V, Ptr ws, int64_t ws_bytes, int dev_type,
                   int dev_index, Ptr stream) {
  zaya_rt::SampleParams p{ptr(logits), row_stride, dt(dtype), ptr<const float>(temperature),
                          ptr<const int32_t>(top_k), ptr<const float>(top_p), ptr<const float>(min_p),
                          ptr<const int64_t>(seed), ptr<const int64_t>(step), ptr<int64_t>(out), B, V, ptr(ws),
                          ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::sample_tokens(p, dev(dev_type, dev_index, stream));
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def("kv_write", &kv_write);
  m.def("copy_pages", &copy_pages);
  m.def("gather_tail", &gather_tail);
  m.def("sample_tokens", &sample_tokens);
  m.def("sample_workspace", [](int dev_type, int64_t B, int64_t V) {
    return zaya_rt::sample_workspace(dev(dev_type, 0, 0), B, V);
  });
  m.def("sampling_uniform", &zaya_rt::sampling_uniform,
        "The uniform in [0, 1) the sampler uses for (seed, step): counter-based, independent of the batch.");
}
