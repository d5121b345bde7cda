// C entry points over the emulated GPU kernels (tools/gpu_emu/build.py), for ctypes: pointers and sizes flat,
// in the order of the params structs. Each returns the kernel's error message or null.
#include "cuda/attention_kernels.cuh"
#include "cuda/attention_sm90.cuh"
#include "cuda/cca_bwd_kernels.cuh"
#include "cuda/cca_kernels.cuh"
#include "cuda/runtime_kernels.cuh"

using namespace zaya_rt;
using I = int64_t;

extern "C" {

const char* emu_varlen_fwd(const void* q, I q_ts, I q_hs, const void* k, I k_ts, I k_hs, const void* v, I v_ts,
                           I v_hs, const int32_t* cu_q, const int32_t* cu_k, void* out, I o_ts, I o_hs, float* lse,
                           I lse_hs, int dtype, I batch, I tq, I tk, I hq, I hk, I d, int causal, I window,
                           float scale) {
  AttnVarlenFwdParams p{q, q_ts, q_hs, k, k_ts, k_hs, v, v_ts, v_hs, cu_q, cu_k, out, o_ts, o_hs, lse, lse_hs,
                        static_cast<DType>(dtype), batch, tq, tk, hq, hk, d, 0, 0, causal != 0, window, scale,
                        nullptr, 0};
  return gpu::attention_varlen_fwd(p, nullptr);
}

// Emulated MFMA instructions issued so far (one per wave and instruction; tools/gpu_emu/amdgcn_mfma.h).
I emu_mfma_calls() { return emu::amdgcn::mfma_calls.load(); }

// One emulated v_mfma_f32_16x16x16_{bf16 (dtype 2), f16 (dtype 1)} on a wave of 64 lanes: a, b [64][4] are the
// lanes' operand items (16-bit patterns), c, d [64][4] the accumulator items (the lane layout under test).
const char* emu_mfma_16x16x16(int dtype, const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  using namespace emu::amdgcn;
  if (ZAYA_RT_EMU_WARP != 64) return "needs the 64-lane emulator";
  emu::launch(dim3(1), dim3(64), 0, nullptr, [=] {
    const int l = lane();
    b16x4 va, vb;
    f32x4 vc;
    for (int e = 0; e < 4; ++e)
      va[e] = static_cast<short>(a[4 * l + e]), vb[e] = static_cast<short>(b[4 * l + e]), vc[e] = c[4 * l + e];
    const f32x4 vd = dtype == 2 ? __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(va, vb, vc, 0, 0, 0)
                                : __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(f16x4, va),
                                                                        __builtin_bit_cast(f16x4, vb), vc, 0, 0, 0);
    for (int e = 0; e < 4; ++e) d[4 * l + e] = vd[e];
  });
  return nullptr;
}

// The sm_90a wgmma forward alone (bf16/fp16, d 64/128), whatever the dispatch would pick.
const char* emu_varlen_fwd_sm90(const void* q, I q_ts, I q_hs, const void* k, I k_ts, I k_hs, const void* v,
                                I v_ts, I v_hs, const int32_t* cu_q, const int32_t* cu_k, void* out, I o_ts,
                                I o_hs, float* lse, I lse_hs, int dtype, I batch, I tq, I tk, I hq, I hk, I d,
                                int causal, I window, float scale) {
  AttnVarlenFwdParams p{q, q_ts, q_hs, k, k_ts, k_hs, v, v_ts, v_hs, cu_q, cu_k, out, o_ts, o_hs, lse, lse_hs,
                        static_cast<DType>(dtype), batch, tq, tk, hq, hk, d, 0, 0, causal != 0, window, scale,
                        nullptr, 0};
  if (d != 64 && d != 128) return "sm90 forward: head dim must be 64 or 128";
  if (p.dtype == DType::kBFloat16) return gpu::attn_sm90::launch_any<gpu::bf16>(p, nullptr);
  if (p.dtype == DType::kFloat16) return gpu::attn_sm90::launch_any<gpu::f16>(p, nullptr);
  return "sm90 forward: dtype must be bf16 or fp16";
}

I emu_varlen_bwd_workspace(I tq, I hq) {
  AttnVarlenBwdParams p{};
  p.total_q = tq, p.num_heads_q = hq;
  return gpu::attention_varlen_bwd_workspace(p);
}

const char* emu_varlen_bwd(const void* q, I q_ts, I q_hs, const void* k, I k_ts, I k_hs, const void* v, I v_ts,
                           I v_hs, const void* out, I o_ts, I o_hs, const void* dout, I do_ts, I do_hs,
                           const float* lse, I lse_hs, const int32_t* cu_q, const int32_t* cu_k, void* dq, I dq_ts,
                           I dq_hs, void* dk, I dk_ts, I dk_hs, void* dv, I dv_ts, I dv_hs, int dtype, I batch, I tq,
                           I tk, I hq, I hk, I d, int causal, I window, float scale, void* ws, I ws_bytes) {
  AttnVarlenBwdParams p{q, q_ts, q_hs, k, k_ts, k_hs, v, v_ts, v_hs, out, o_ts, o_hs, dout, do_ts, do_hs, lse,
                        lse_hs, cu_q, cu_k, dq, dq_ts, dq_hs, dk, dk_ts, dk_hs, dv, dv_ts, dv_hs,
                        static_cast<DType>(dtype), batch, tq, tk, hq, hk, d, 0, 0, causal != 0, window, scale, ws,
                        ws_bytes};
  return gpu::attention_varlen_bwd(p, nullptr);
}

static AttnPagedDecodeParams decode_params(const void* q, I q_bs, I q_ts, I q_hs, const void* kc, I k_ps, I k_ss,
                                           I k_hs, const void* vc, I v_ps, I v_ss, I v_hs, const int32_t* bt,
                                           I bt_stride, const int32_t* seq_lens, void* out, I o_bs, I o_ts, I o_hs,
                                           int dtype, I batch, I n, I hq, I hk, I d, I page, I pages, I max_pages,
                                           I window, float scale, I splits, void* ws, I ws_bytes) {
  return AttnPagedDecodeParams{q, q_bs, q_ts, q_hs, kc, k_ps, k_ss, k_hs, vc, v_ps, v_ss, v_hs, bt, bt_stride,
                               seq_lens, out, o_bs, o_ts, o_hs, static_cast<DType>(dtype), batch, n, hq, hk, d,
                               page, pages, max_pages, window, scale, splits, ws, ws_bytes};
}

#define DECODE_ARGS                                                                                              \
  const void *q, I q_bs, I q_ts, I q_hs, const void *kc, I k_ps, I k_ss, I k_hs, const void *vc, I v_ps, I v_ss, \
      I v_hs, const int32_t *bt, I bt_stride, const int32_t *seq_lens, void *out, I o_bs, I o_ts, I o_hs,        \
      int dtype, I batch, I n, I hq, I hk, I d, I page, I pages, I max_pages, I window, float scale, I splits,    \
      void *ws, I ws_bytes
#define DECODE_FWD                                                                                               \
  q, q_bs, q_ts, q_hs, kc, k_ps, k_ss, k_hs, vc, v_ps, v_ss, v_hs, bt, bt_stride, seq_lens, out, o_bs, o_ts,     \
      o_hs, dtype, batch, n, hq, hk, d, page, pages, max_pages, window, scale, splits, ws, ws_bytes

I emu_decode_workspace(DECODE_ARGS) { return gpu::attention_decode_workspace(decode_params(DECODE_FWD)); }
const char* emu_decode(DECODE_ARGS) { return gpu::attention_decode(decode_params(DECODE_FWD), nullptr); }

const char* emu_cca_prep_fwd(const void* const* ptrs, const I* strides, const int* dtypes, const I* sizes,
                             float eps) {
  CcaPrepFwdParams p{};
  p.qp = ptrs[0], p.kp = ptrs[1], p.v_cur = ptrs[2], p.v_del = ptrs[3];
  p.conv0_w = ptrs[4], p.conv0_b = ptrs[5], p.conv1_w = ptrs[6], p.conv1_b = ptrs[7], p.temp = ptrs[8];
  p.conv_state_in = ptrs[9], p.v_state_in = ptrs[10], p.positions = ptrs[11];
  p.cu_seqlens = static_cast<const int32_t*>(ptrs[12]);
  p.inv_freq = static_cast<const float*>(ptrs[13]);
  p.q = const_cast<void*>(ptrs[14]), p.k = const_cast<void*>(ptrs[15]), p.v = const_cast<void*>(ptrs[16]);
  p.conv_state_out = const_cast<void*>(ptrs[17]), p.v_state_out = const_cast<void*>(ptrs[18]);
  p.qp_row_stride = strides[0], p.kp_row_stride = strides[1], p.v_cur_row_stride = strides[2];
  p.v_del_row_stride = strides[3], p.cs_in_batch_stride = strides[4], p.cs_in_channel_stride = strides[5];
  p.vs_in_batch_stride = strides[6], p.q_row_stride = strides[7], p.q_head_stride = strides[8];
  p.k_row_stride = strides[9], p.k_head_stride = strides[10], p.v_row_stride = strides[11];
  p.cs_out_batch_stride = strides[12], p.cs_out_channel_stride = strides[13], p.vs_out_batch_stride = strides[14];
  p.dtype = static_cast<DType>(dtypes[0]), p.w_dtype = static_cast<DType>(dtypes[1]);
  p.state_dtype = static_cast<DType>(dtypes[2]), p.pos_dtype = static_cast<DType>(dtypes[3]);
  p.T = sizes[0], p.B = sizes[1], p.Hq = sizes[2], p.Hk = sizes[3], p.d = sizes[4], p.k0 = sizes[5];
  p.k1 = sizes[6], p.rd = sizes[7];
  p.norm_eps = eps;
  return gpu::cca_prep_fwd(p, nullptr);
}

// The CCA prep backward (cuda/cca_bwd_kernels.cuh), its params struct filled by field name
// (tools/gpu_emu/params.py), and its workspace bytes.
const char* emu_cca_prep_bwd(const CcaPrepBwdParams* p) { return gpu::cca_prep_bwd(*p, nullptr); }
I emu_cca_prep_bwd_workspace(const CcaPrepBwdParams* p) {
  return gpu::cca_prep_bwd_workspace(p->T, p->B, p->Hq, p->Hk, p->d, p->k0, p->k1, p->rd);
}

// Runtime family (cuda/runtime_kernels.cuh): page operations and the sampler, arguments as in the params structs.
const char* emu_kv_write(const void* k_new, I k_rs, const void* v_new, I v_rs, void* k_cache, void* v_cache,
                         I page_stride, I token_stride, const int32_t* slots, int dtype, I N, I W, I P, I S) {
  KvWriteParams p{k_new, k_rs, v_new, v_rs, k_cache, v_cache, page_stride, token_stride, slots,
                  static_cast<DType>(dtype), N, W, P, S};
  return gpu::kv_write(p, nullptr);
}

const char* emu_copy_pages(void* cache, I layer_stride, I page_stride, I page_elems, const int32_t* src,
                           const int32_t* dst, int dtype, I L, I P, I n) {
  CopyPagesParams p{cache, layer_stride, page_stride, page_elems, src, dst, static_cast<DType>(dtype), L, P, n};
  return gpu::copy_pages(p, nullptr);
}

const char* emu_gather_tail(const void* cache, I page_stride, I token_stride, const int32_t* bt, I bt_stride,
                            const int32_t* seq_lens, void* out, int dtype, I B, I M, I P, I S, I W, I tau) {
  GatherTailParams p{cache, page_stride, token_stride, bt, bt_stride, seq_lens, out, static_cast<DType>(dtype),
                     B, M, P, S, W, tau};
  return gpu::gather_tail(p, nullptr);
}

const char* emu_sample_tokens(const void* logits, I row_stride, int dtype, const float* temperature,
                              const int32_t* top_k, const float* top_p, const float* min_p, const int64_t* seed,
                              const int64_t* step, int64_t* out, I B, I V) {
  SampleParams p{logits, row_stride, static_cast<DType>(dtype), temperature, top_k, top_p, min_p, seed, step, out,
                 B, V, nullptr, 0};
  return gpu::sample_tokens(p, nullptr);
}

double emu_sampling_uniform(int64_t seed, int64_t step) { return sampling_uniform(seed, step); }

}  // extern "C"
