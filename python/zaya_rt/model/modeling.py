"""The ZAYA1 MoE++ model (SPEC section 3), numerically equal to transformers' `ZayaForCausalLM`.

Module and parameter names follow the transformers-native checkpoint layout, so `state_dict()` keys are
checkpoint keys. This is the one copy of the layer math: the layers run on flat token rows [N, ...] with a
`ForwardContext` (model/context.py) that says where the rows sit (batch rows or packed documents), which
kernels compute (zaya_rt.ops by default; the runtime injects its direct CPU calls) and how state is kept (no
cache, the contiguous `ZayaCache`, or the runtime's paged cache). Legend: N token rows, B batch rows or
documents, T tokens per row, S keys (cached + new), D hidden, R router width, E experts.
"""

from __future__ import annotations

import torch
from torch import nn

from zaya_rt import ops, ref
from zaya_rt.model.cache import ZayaCache
from zaya_rt.model.context import OPS_KERNELS, ForwardContext, RowsState, allowed_mask
from zaya_rt.model.loss import linear_cross_entropy
from zaya_rt.model.config import ZayaConfig
from zaya_rt.ops.attention import kernel_takes_head_dim


class ZayaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class ZayaResidualScaling(nn.Module):
    """r = (y + hidden_states_bias) * hidden_states_scale + (h + residual_bias) * residual_scale, in fp32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden_size))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden_size))
        self.residual_scale = nn.Parameter(torch.ones(hidden_size))
        self.residual_bias = nn.Parameter(torch.zeros(hidden_size))

    def fused_with_norm(self, y: torch.Tensor, h: torch.Tensor, norm: ZayaRMSNorm):
        """(r, norm(r)) in one pass."""
        return ops.residual_rms_norm(
            y, h, self.hidden_states_bias, self.hidden_states_scale, self.residual_bias, self.residual_scale,
            norm.weight, norm.eps,
        )


class ZayaCCAProjection(nn.Module):
    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        hq, hk, d, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        bias = config.attention_bias
        self.num_q_heads, self.num_kv_heads = hq, hk
        self.q_proj = nn.Linear(dim, hq * d, bias=bias)
        self.k_proj = nn.Linear(dim, hk * d, bias=bias)
        self.v_proj_current = nn.Linear(dim, hk * d // 2, bias=bias)
        self.v_proj_delayed = nn.Linear(dim, hk * d // 2, bias=bias)
        channels = (hq + hk) * d
        self.conv_qk_depthwise = nn.Conv1d(channels, channels, config.cca_time0, groups=channels)
        self.conv_qk_grouped = nn.Conv1d(channels, channels, config.cca_time1, groups=hq + hk)


class ZayaQKNorm(nn.Module):
    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.zeros(config.num_key_value_heads))

    def forward(self, q: torch.Tensor, k: torch.Tensor):
        return ref.qk_norm(q, k, self.temp)


class ZayaAttention(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.layer_type = config.layer_types[layer_idx]
        self.window = config.window(layer_idx)
        self.rope_dims = int(config.head_dim * config.partial_rotary_factor(self.layer_type))
        self.rope_theta = config.rope_theta(self.layer_type)
        self.kernel_attention = kernel_takes_head_dim(config.head_dim)
        self.qkv_proj = ZayaCCAProjection(config)
        self.qk_norm = ZayaQKNorm(config)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size,
                                bias=config.attention_bias)

    def forward(self, x_ND: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """x [N, D] (input_layernorm applied) -> o_proj(attention) [N, D]; K/V and CCA state go to ctx.state."""
        kern, state = ctx.kernels, ctx.state
        if ctx.conv_mask is not None:
            x_ND = x_ND * ctx.conv_mask[:, None].to(x_ND.dtype)
        qp, kp, v_cur, v_del = kern.qkv(self.qkv_proj, x_ND)
        conv_in, v_in = state.cca_state(self)
        delayed_bias = self.qkv_proj.v_proj_delayed.bias
        if v_in is None and delayed_bias is not None:
            # A fresh sequence shifts in the projection of a zero input: the delayed projection's bias.
            v_in = delayed_bias.expand(ctx.cu_seqlens.shape[0] - 1, -1)
        q, k, v, conv_out, v_out = kern.cca(self, qp, kp, v_cur, v_del, ctx.positions, ctx.cu_seqlens, conv_in, v_in)
        state.store(self, k, v, conv_out, v_out, (qp, kp, v_del, conv_in))
        out = state.attend(self, q, k, v)
        return kern.linear(self.o_proj, out.reshape(out.shape[0], -1))


class ZayaRouterMLP(nn.Module):
    def __init__(self, width: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.norm = ZayaRMSNorm(width, eps)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, num_classes, bias=False)


class ZayaRouter(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        r = config.router_hidden_size
        self.num_experts = config.num_experts
        self.down_proj = nn.Linear(config.hidden_size, r)
        self.router_states_scale = nn.Parameter(torch.ones(r)) if layer_idx > 0 else None
        self.router_mlp = ZayaRouterMLP(r, config.num_experts + 1, config.rms_norm_eps)
        bias = torch.zeros(config.num_experts + 1, dtype=torch.float32)
        bias[-1] = -1.0
        self.register_buffer("balancing_biases", bias)

    def forward(self, x_TD: torch.Tensor, z_prev_TR: torch.Tensor | None):
        """Returns logits [T, E+1], gate [T], choice [T] (E = skip), z [T, R]."""
        mlp = self.router_mlp
        return ops.zaya_router(
            x_TD, z_prev_TR, self.down_proj.weight, self.down_proj.bias, self.router_states_scale,
            mlp.norm.weight, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, mlp.out_proj.weight,
            self.balancing_biases, mlp.norm.eps,
        )


class ZayaExperts(nn.Module):
    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        e, i, d = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        # Training memory/speed switch (ops.moe_experts): True (default) keeps the gate-up products [T*k, 2I] for
        # the backward, which then skips recomputing them; False saves that memory. Inference is not affected.
        self.keep_activations = True

    def forward(self, x_TD, choice_T, gate_T):
        """x [T, D], choice [T] (E = skip), gate [T] -> [T, D]."""
        return ops.moe_experts(x_TD, choice_T, gate_T, self.gate_up_proj, self.down_proj,
                               keep_activations=self.keep_activations)


class ZayaSparseMoeBlock(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.skip_passthrough = config.skip_passthrough
        self.gate = ZayaRouter(config, layer_idx)
        self.experts = ZayaExperts(config)
        # Replaces kernels.experts when set (same call): expert parallelism (train/expert_parallel.py).
        self.experts_runner = None

    def forward(self, x_ND: torch.Tensor, z_prev_NR: torch.Tensor | None, kernels=OPS_KERNELS,
                replay_N: torch.Tensor | None = None):
        """x [N, D], z_prev [N, R] or None -> (y [N, D], z [N, R]). replay [N] int (E = skip): use these experts
        instead of the router's choice, gated by the router's probability of them (so its gradients flow)."""
        logits, gate, choice, z = kernels.router(self.gate, x_ND, z_prev_NR)
        if replay_N is not None:
            forced = replay_N.to(device=choice.device, dtype=choice.dtype)
            p_forced = torch.softmax(logits, dim=-1).gather(-1, forced[:, None])[:, 0].to(gate.dtype)
            # where the router agrees, its own gate (same numbers as without replay)
            gate = torch.where(forced == choice, gate, p_forced).masked_fill(forced == self.gate.num_experts, 0)
            choice = forced
        run_experts = kernels.experts if self.experts_runner is None else self.experts_runner
        y = run_experts(self.experts, x_ND, choice, gate)
        if self.skip_passthrough:
            skipped = choice == self.gate.num_experts
            p_skip = torch.softmax(logits, dim=-1)[:, -1]
            y = y + torch.where(skipped, p_skip, 0).to(y.dtype)[:, None] * x_ND
        return y, z


class ZayaDecoderLayer(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = ZayaAttention(config, layer_idx)
        self.mlp = ZayaSparseMoeBlock(config, layer_idx)
        self.input_layernorm = ZayaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = ZayaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_residual_scale = ZayaResidualScaling(config.hidden_size)
        self.post_mlp_residual_scale = ZayaResidualScaling(config.hidden_size)

    def forward(self, x, h, z_prev, next_norm: ZayaRMSNorm, ctx: ForwardContext):
        """x = input_layernorm(h) (already applied), h the fp32 residual stream [N, D], z_prev [N, R] or None.

        Returns (h_next, next_norm(h_next), z): the post-MoE residual scaling is fused with the next norm.
        """
        kern = ctx.kernels
        attn = self.self_attn(x, ctx)
        r, x2 = kern.residual_norm(self.post_attention_residual_scale, self.post_attention_layernorm, attn, h)
        replay = None if ctx.routed_experts is None else ctx.routed_experts[:, self.self_attn.layer_idx]
        y, z = self.mlp(x2, z_prev, kern, replay)
        h_next, x_next = kern.residual_norm(self.post_mlp_residual_scale, next_norm, y, r)
        return h_next, x_next, z


class ZayaModel(nn.Module):
    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(config.hidden_size))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.layers = nn.ModuleList(ZayaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = ZayaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def embed(self, input_ids_N: torch.Tensor) -> torch.Tensor:
        """The fp32 residual stream entering the first layer: (embedding + input bias) * input scale, [N, D]."""
        return (self.embed_tokens(input_ids_N).float() + self.input_hidden_states_bias.float()) * (
            self.input_hidden_states_scale.float()
        )

    def run(self, input_ids_N: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The layer stack over flat token rows: input_ids [N] -> final-normed hidden states [N, D] in the
        weights' dtype. ctx says where the rows sit and supplies the kernels and the state adapter."""
        h, x = ctx.kernels.embed(self, input_ids_N)
        layers = list(self.layers)
        next_norms = [layer.input_layernorm for layer in layers[1:]] + [self.norm]
        z = None
        for layer, next_norm in zip(layers, next_norms):
            h, x, z = layer(x, h, z, next_norm, ctx)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask=None, cache: ZayaCache | None = None, *,
                cu_seqlens: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                routed_experts: torch.Tensor | None = None):
        """Final-normed hidden states in the weights' dtype: [B, T, D] for batch rows input_ids [B, T]; for
        packed documents (cu_seqlens given) [N, D] or [1, N, D] as input_ids is [N] or [1, N]. routed_experts
        (input_ids' shape + [L]): router replay, see ZayaForCausalLM.forward."""
        replay = _check_routed_experts(routed_experts, input_ids, self.config)
        if cu_seqlens is not None:
            return self._packed(input_ids, cu_seqlens, position_ids, attention_mask, cache, replay)
        if position_ids is not None:
            raise ValueError("position_ids is only taken with cu_seqlens (packed documents)")
        B, T = input_ids.shape
        device = input_ids.device
        past = 0 if cache is None else cache.length
        new_valid = _new_token_mask(attention_mask, B, T, past, device)
        if cache is not None:
            cache.reserve(B, T)
            cache.valid[:, past : past + T] = new_valid
            valid = cache.valid[:, : past + T]
        else:
            valid = new_valid
        conv_mask = None if bool(new_valid.all()) else new_valid
        if cache is not None and conv_mask is not None:
            cache.padded = True
        allowed = None
        if conv_mask is not None or (cache is not None and cache.padded):
            allowed = {w: allowed_mask(valid, past, T, w) for w in {layer.self_attn.window for layer in self.layers}}
        cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=device)
        ctx = ForwardContext(
            positions=torch.arange(past, past + T, device=device).repeat(B), cu_seqlens=cu,
            conv_mask=None if conv_mask is None else conv_mask.reshape(B * T), kernels=OPS_KERNELS,
            state=RowsState(cu, batch=B, tokens=T, cache=cache, past=past, allowed=allowed), routed_experts=replay,
        )
        x = self.run(input_ids.reshape(B * T), ctx)
        if cache is not None:
            cache.length += T
        return x.view(B, T, -1)

    def _packed(self, input_ids, cu_seqlens, position_ids, attention_mask, cache, replay):
        if attention_mask is not None or cache is not None:
            raise ValueError("cu_seqlens (packed documents) takes no attention_mask and no cache")
        N = input_ids.shape[-1]
        ids = input_ids.reshape(N)
        _check_cu_seqlens(cu_seqlens, N, ids.device)
        if position_ids is None:
            lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
            starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lens, output_size=N)
            positions = torch.arange(N, device=ids.device) - starts
        else:
            positions = _check_position_ids(position_ids, N, ids.device)
        ctx = ForwardContext(positions=positions, cu_seqlens=cu_seqlens, conv_mask=None, kernels=OPS_KERNELS,
                             state=RowsState(cu_seqlens), routed_experts=replay)
        x = self.run(ids, ctx)
        return x.view(*input_ids.shape, -1)


class ZayaForCausalLM(nn.Module):
    """ZAYA1 causal LM. `model(input_ids, attention_mask=None, cache=None)` -> logits [B, T, vocab]."""

    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = ZayaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: ZayaCache | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        routed_experts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch rows: input_ids [B, T] int; attention_mask [B, T] or [B, cached + T] (1 = real token, 0 = left
        padding); cache from `new_cache` to continue earlier calls. Returns logits [B, T, vocab].

        Packed documents (the training form): input_ids [N] or [1, N] and cu_seqlens int32 [docs + 1]
        (0 = cu[0] <= ... <= cu[docs] = N); every document is independent (attention, the CCA conv state and
        the value shift restart at each boundary) and its positions restart at 0 unless position_ids ([N] or
        [1, N] int) are given. Returns logits [N, vocab] or [1, N, vocab]. Logits are in the weights' dtype.

        Router replay (RL on engine rollouts): routed_experts, int of input_ids' shape + [num_layers] (values
        0..E, E = skip; e.g. `Completion.routed_experts`), makes every MoE layer use these experts for each
        token instead of its router's choice; the gate is still the router's probability of the replayed
        expert, so the router gets gradients. Each token's record is read by index, so a recompute under
        activation checkpointing reads the same one."""
        if cu_seqlens is None:
            _check_input_ids(input_ids, self.config.vocab_size)
        else:
            _check_packed_ids(input_ids, self.config.vocab_size)
        return self.lm_head(self.model(input_ids, attention_mask, cache, cu_seqlens=cu_seqlens,
                                       position_ids=position_ids, routed_experts=routed_experts))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, *, cu_seqlens: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None) -> torch.Tensor:
        """Cross-entropy of the logits `forward` would give against `labels` (input_ids' shape, int; each token's
        own target, e.g. the next token, or ignore_index), computed by the fused chunked LM-head loss
        (model/loss.py) so that the [tokens, vocab] logits are never held. Same input forms as `forward`;
        reduction "mean" (over non-ignored tokens) or "sum". Returns a float32 scalar."""
        if cu_seqlens is None:
            _check_input_ids(input_ids, self.config.vocab_size)
        else:
            _check_packed_ids(input_ids, self.config.vocab_size)
        if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
            raise ValueError(f"labels must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        hidden = self.model(input_ids, attention_mask, None, cu_seqlens=cu_seqlens, position_ids=position_ids)
        return linear_cross_entropy(hidden, self.lm_head.weight, labels, self.lm_head.bias, ignore_index=ignore_index,
                                    reduction=reduction, chunk_size=chunk_size)

    def new_cache(self, batch_size: int, max_seq_len: int) -> ZayaCache:
        """An empty contiguous cache for `batch_size` sequences of up to `max_seq_len` tokens."""
        w = self.model.norm.weight
        return ZayaCache(self.config, batch_size, max_seq_len, dtype=w.dtype, device=w.device)

    @torch.inference_mode()
    def generate_greedy(
        self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Greedy decoding with the contiguous cache: prefill, then one token per step.
        Returns the generated ids [B, max_new_tokens]."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        B, T = input_ids.shape
        cache = self.new_cache(B, T + max_new_tokens)
        logits = self(input_ids, attention_mask, cache)
        out = [logits[:, -1].argmax(-1)]
        for _ in range(max_new_tokens - 1):
            logits = self(out[-1][:, None], None, cache)
            out.append(logits[:, -1].argmax(-1))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def init_random(self, seed: int = 0, std: float = 0.02) -> "ZayaForCausalLM":
        """Fills every parameter with random values (scales and biases around their neutral values), for
        demos and tests; returns self."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("scale") or name.endswith("norm.weight"):
                value = 1.0 + 0.1 * noise
            elif leaf == "temp":
                value = 1.0 + 0.2 * noise.abs()
            elif leaf.endswith("bias") and "proj" not in name and "fc" not in name and "conv" not in name:
                value = 0.05 * noise
            else:
                value = std * noise
            p.copy_(value.to(p.dtype))
        for router in (m for m in self.modules() if isinstance(m, ZayaRouter)):
            router.balancing_biases.copy_(0.05 * torch.randn(router.balancing_biases.shape, generator=gen))
        return self


def _check_input_ids(input_ids, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape [batch, tokens] with tokens >= 1, got {tuple(input_ids.shape)}")
    # Reading the ids costs a host sync on GPU, so only host-resident ids are range-checked here (in eager mode:
    # under torch.compile the read would split the graph).
    if input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_compiling() and (
        int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size
    ):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got [{int(input_ids.min())}, {int(input_ids.max())}]")


def _check_packed_ids(input_ids, vocab_size: int) -> None:
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        _check_input_ids(input_ids[None], vocab_size)
    elif isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, input_ids must be [N] or [1, N], got {tuple(input_ids.shape)}")
    else:
        _check_input_ids(input_ids, vocab_size)


def _check_routed_experts(routed_experts, input_ids, config) -> torch.Tensor | None:
    """routed_experts (input_ids' shape + [L]) as [N, L] int64 on input_ids' device, or None."""
    if routed_experts is None:
        return None
    if not isinstance(routed_experts, torch.Tensor):
        raise TypeError(f"routed_experts must be a torch.Tensor, got {type(routed_experts).__name__}")
    if routed_experts.is_floating_point() or routed_experts.is_complex() or routed_experts.dtype == torch.bool:
        raise TypeError(f"routed_experts must be an integer tensor, got {routed_experts.dtype}")
    L = config.num_hidden_layers
    if tuple(routed_experts.shape) != (*input_ids.shape, L):
        raise ValueError(f"routed_experts must have shape {(*input_ids.shape, L)} (input_ids' shape + [num_layers]), "
                         f"got {tuple(routed_experts.shape)}")
    flat = routed_experts.reshape(-1, L).to(device=input_ids.device, dtype=torch.int64)
    if flat.device.type == "cpu" and flat.numel() and not torch.compiler.is_compiling() and (
            int(flat.min()) < 0 or int(flat.max()) > config.num_experts):
        raise ValueError(f"routed_experts must lie in [0, {config.num_experts}] ({config.num_experts} = skip), got "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    return flat


def _check_cu_seqlens(cu_seqlens, N: int, device) -> None:
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be int32 [docs + 1] with docs >= 1, got {cu_seqlens.dtype} "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, input_ids on {device}")
    # Reading the offsets costs a host sync on GPU, so only host-resident offsets are checked here (in eager mode).
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling() and (
        int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != N or bool((cu_seqlens[1:] < cu_seqlens[:-1]).any())
    ):
        raise ValueError(f"cu_seqlens must rise from 0 to the token count {N}, got {cu_seqlens.tolist()}")


def _check_position_ids(position_ids, N: int, device) -> torch.Tensor:
    if not isinstance(position_ids, torch.Tensor) or position_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("position_ids must be an int64 or int32 tensor")
    if position_ids.numel() != N or position_ids.dim() not in (1, 2) or position_ids.shape[-1] != N:
        raise ValueError(f"position_ids must be [N] or [1, N] with N = {N}, got {tuple(position_ids.shape)}")
    return position_ids.reshape(N).to(device=device, dtype=torch.int64)


def _new_token_mask(attention_mask, B: int, T: int, past: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a [batch, tokens] tensor")
    if attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, past + T):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({B}, {T}) or ({B}, {past + T})"
        )
    return attention_mask[:, -T:].to(device=device, dtype=torch.bool)


