// pybind11 bindings of the fused softmax-cross-entropy rows (CPU): CrossEntropyRowsParams by field name
// (csrc/bindings_params.h). python/zaya_rt/ops/cross_entropy.py fills it.
#include "bindings_params.h"

void bind_cross_entropy(py::module_& m) {
  using namespace zaya_rt::bindings;
  using P = zaya_rt::CrossEntropyRowsParams;
  ParamsClass<P>(m, "CrossEntropyRowsParams",
                 "Arguments of cross_entropy_rows (zaya_rt/cross_entropy.h), by field name.")
      .ptr("logits", &P::logits).value("logits_row_stride", &P::logits_row_stride)
      .ptr("targets", &P::targets).ptr("losses", &P::losses)
      .dtype("dtype", &P::dtype).value("rows", &P::rows).value("vocab", &P::vocab)
      .value("ignore_index", &P::ignore_index).value("grad_scale", &P::grad_scale);
  def_entry<P>(m, "cross_entropy_rows", &zaya_rt::cross_entropy_rows,
               "Per row of logits [rows, vocab]: losses = logsumexp - logit[target] (fp32) and, in place, the "
               "gradient (softmax - one-hot) * grad_scale (CPU).");
}
