// pybind11 bindings of the runtime family (page operations, sampler): KvWriteParams, CopyPagesParams,
// GatherTailParams and SampleParams by field name (csrc/bindings_params.h). python/zaya_rt/ops/runtime.py and
// ops/sampling.py fill them.
#include "bindings_params.h"

void bind_runtime(py::module_& m) {
  using namespace zaya_rt::bindings;
  {
    using P = zaya_rt::KvWriteParams;
    ParamsClass<P>(m, "KvWriteParams", "Arguments of kv_write (zaya_rt/runtime.h), by field name.")
        .ptr("k_new", &P::k_new).value("k_new_row_stride", &P::k_new_row_stride)
        .ptr("v_new", &P::v_new).value("v_new_row_stride", &P::v_new_row_stride)
        .ptr("k_cache", &P::k_cache).ptr("v_cache", &P::v_cache)
        .value("page_stride", &P::page_stride).value("token_stride", &P::token_stride)
        .ptr("slot_mapping", &P::slot_mapping).dtype("dtype", &P::dtype)
        .value("N", &P::N).value("W", &P::W).value("P", &P::P).value("S", &P::S);
    def_entry<P>(m, "kv_write", &zaya_rt::kv_write, "Writes N key/value rows into their cache slots.");
  }
  {
    using P = zaya_rt::CopyPagesParams;
    ParamsClass<P>(m, "CopyPagesParams", "Arguments of copy_pages (zaya_rt/runtime.h), by field name.")
        .ptr("cache", &P::cache).value("layer_stride", &P::layer_stride).value("page_stride", &P::page_stride)
        .value("page_elems", &P::page_elems).ptr("src", &P::src).ptr("dst", &P::dst).dtype("dtype", &P::dtype)
        .value("L", &P::L).value("P", &P::P).value("n", &P::n);
    def_entry<P>(m, "copy_pages", &zaya_rt::copy_pages, "cache[l, dst[i]] = cache[l, src[i]] for every layer l.");
  }
  {
    using P = zaya_rt::GatherTailParams;
    ParamsClass<P>(m, "GatherTailParams", "Arguments of gather_tail (zaya_rt/runtime.h), by field name.")
        .ptr("cache", &P::cache).value("page_stride", &P::page_stride).value("token_stride", &P::token_stride)
        .ptr("block_table", &P::block_table).value("block_table_stride", &P::block_table_stride)
        .ptr("seq_lens", &P::seq_lens).ptr("out", &P::out).dtype("dtype", &P::dtype)
        .value("B", &P::B).value("M", &P::M).value("P", &P::P).value("S", &P::S).value("W", &P::W)
        .value("tau", &P::tau);
    def_entry<P>(m, "gather_tail", &zaya_rt::gather_tail, "The last tau cache rows of each sequence.");
  }
  {
    using P = zaya_rt::SampleParams;
    ParamsClass<P>(m, "SampleParams", "Arguments of sample_tokens (zaya_rt/runtime.h), by field name.")
        .ptr("logits", &P::logits).value("row_stride", &P::row_stride).dtype("dtype", &P::dtype)
        .ptr("temperature", &P::temperature).ptr("top_k", &P::top_k).ptr("top_p", &P::top_p)
        .ptr("min_p", &P::min_p).ptr("seed", &P::seed).ptr("step", &P::step).ptr("out", &P::out)
        .value("B", &P::B).value("V", &P::V)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "sample_tokens", &zaya_rt::sample_tokens, "One token per row of logits [B, V].");
    def_size<P>(m, "sample_workspace", &zaya_rt::sample_workspace, "Workspace bytes of sample_tokens.");
  }
  m.def("sampling_uniform", &zaya_rt::sampling_uniform,
        "The uniform in [0, 1) the sampler uses for (seed, step): counter-based, independent of the batch.");
}
