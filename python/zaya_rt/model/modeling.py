"""The ZAYA1 MoE++ model (SPEC section 3), numerically equal to transformers' `ZayaForCausalLM`.

Module and parameter names follow the transformers-native checkpoint layout, so `state_dict()` keys are
checkpoint keys. Ops with a zaya_rt kernel come from `zaya_rt.ops`; the rest from `zaya_rt.ref` until their
kernels land. Legend: B batch, T new tokens, S keys (cached + new), D hidden, R router width, E experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zaya_rt import ops, ref
from zaya_rt.model.cache import LayerCache, ZayaCache
from zaya_rt.model.config import ZayaConfig


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

    def forward(self, x_BTD: torch.Tensor, temp: torch.Tensor, positions_N: torch.Tensor, cu_seqlens: torch.Tensor,
                rope_dims: int, rope_theta: float, conv_state=None, v_state=None):
        """x [B, T, D] (padding rows already zeroed), each batch row one sequence; positions [B*T], cu_seqlens
        [B+1]. Returns q [B, T, Hq, d], k, v [B, T, Hk, d] (after qk norm, temperature and RoPE), conv_state
        [B, C, K], v_state [B, Hk*d/2]. None states start every row fresh."""
        B, T, _ = x_BTD.shape
        flat = lambda lin: lin(x_BTD).reshape(B * T, -1)  # noqa: E731
        if v_state is None and self.v_proj_delayed.bias is not None:
            # A fresh sequence shifts in the projection of a zero input: the delayed projection's bias.
            v_state = self.v_proj_delayed.bias.expand(B, -1)
        q, k, v, conv_state, v_state = ops.cca_prep(
            flat(self.q_proj), flat(self.k_proj), flat(self.v_proj_current), flat(self.v_proj_delayed),
            self.conv_qk_depthwise.weight, self.conv_qk_depthwise.bias,
            self.conv_qk_grouped.weight, self.conv_qk_grouped.bias, temp, positions_N, cu_seqlens,
            conv_state, v_state, num_q_heads=self.num_q_heads, num_kv_heads=self.num_kv_heads,
            rope_dims=rope_dims, rope_theta=rope_theta,
        )
        return (q.view(B, T, self.num_q_heads, -1), k.view(B, T, self.num_kv_heads, -1),
                v.view(B, T, self.num_kv_heads, -1), conv_state, v_state)


class ZayaQKNorm(nn.Module):
    def __init__(self, config: ZayaConfig) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.zeros(config.num_key_value_heads))

    def forward(self, q: torch.Tensor, k: torch.Tensor):
        return ref.qk_norm(q, k, self.temp)


class ZayaAttention(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.layer_type = config.layer_types[layer_idx]
        self.window = config.window(layer_idx)
        # zaya_rt's attention kernels take head dims that are multiples of 8 in [32, 256].
        self.kernel_attention = 32 <= config.head_dim <= 256 and config.head_dim % 8 == 0
        self.qkv_proj = ZayaCCAProjection(config)
        self.qk_norm = ZayaQKNorm(config)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size,
                                bias=config.attention_bias)

    def forward(self, x_BTD, rope, allowed_BTS, conv_mask_BT, layer_cache: LayerCache | None, past: int):
        """rope = (positions [B*T], cu_seqlens [B+1], rope_dims, rope_theta) for this layer type."""
        B, T, _ = x_BTD.shape
        if conv_mask_BT is not None:
            x_BTD = x_BTD * conv_mask_BT[..., None].to(x_BTD.dtype)
        continuing = layer_cache is not None and past > 0
        q, k, v, conv_state, v_state = self.qkv_proj(
            x_BTD, self.qk_norm.temp, *rope,
            layer_cache.conv_state if continuing else None,
            layer_cache.v_state if continuing else None,
        )
        if layer_cache is not None:
            layer_cache.k[:, past : past + T] = k
            layer_cache.v[:, past : past + T] = v
            layer_cache.conv_state.copy_(conv_state)
            layer_cache.v_state.copy_(v_state)
        scale = self.head_dim**-0.5
        if allowed_BTS is not None or not self.kernel_attention:  # explicit mask (reference path)
            if layer_cache is not None:
                k, v = layer_cache.k[:, : past + T], layer_cache.v[:, : past + T]
            if allowed_BTS is None:
                allowed_BTS = _allowed_mask(torch.ones(B, past + T, dtype=torch.bool, device=q.device), past, T,
                                            self.window)
            out = ref.attention(q, k, v, allowed_BTS, scale)
        elif past == 0:  # every row is one whole sequence: packed causal attention
            cu_seqlens = rope[1]
            out = ops.attention_varlen(q.reshape(B * T, *q.shape[2:]), k.reshape(B * T, *k.shape[2:]),
                                       v.reshape(B * T, *v.shape[2:]), cu_seqlens, cu_seqlens, causal=True,
                                       window=self.window, scale=scale)
        else:  # the T new tokens of each row against its cached keys, the cache read as pages
            k_pages, v_pages, block_table = layer_cache.pages()
            seq_lens = torch.full((B,), past + T, dtype=torch.int32, device=q.device)
            out = ops.attention_decode(q, k_pages, v_pages, block_table, seq_lens, scale=scale, window=self.window)
        return self.o_proj(out.reshape(B, T, -1))


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

    def forward(self, x_TD, choice_T, gate_T):
        """x [T, D], choice [T] (E = skip), gate [T] -> [T, D]."""
        return ops.moe_experts(x_TD, choice_T, gate_T, self.gate_up_proj, self.down_proj)


class ZayaSparseMoeBlock(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.skip_passthrough = config.skip_passthrough
        self.gate = ZayaRouter(config, layer_idx)
        self.experts = ZayaExperts(config)

    def forward(self, x_BTD: torch.Tensor, z_prev_BTR: torch.Tensor | None):
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        z_prev = None if z_prev_BTR is None else z_prev_BTR.reshape(B * T, -1)
        logits, gate, choice, z = self.gate(x_TD, z_prev)
        y = self.experts(x_TD, choice, gate)
        if self.skip_passthrough:
            skipped = choice == self.gate.num_experts
            p_skip = torch.softmax(logits, dim=-1)[:, -1]
            y = y + torch.where(skipped, p_skip, 0).to(y.dtype)[:, None] * x_TD
        return y.view(B, T, D), z.view(B, T, -1)


class ZayaDecoderLayer(nn.Module):
    def __init__(self, config: ZayaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = ZayaAttention(config, layer_idx)
        self.mlp = ZayaSparseMoeBlock(config, layer_idx)
        self.input_layernorm = ZayaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = ZayaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_residual_scale = ZayaResidualScaling(config.hidden_size)
        self.post_mlp_residual_scale = ZayaResidualScaling(config.hidden_size)

    def forward(self, x, h, z_prev, next_norm: ZayaRMSNorm, rope, allowed, conv_mask, layer_cache, past):
        """x = input_layernorm(h) (already applied), h the fp32 residual stream [B, T, D].

        Returns (h_next, next_norm(h_next), z): the post-MoE residual scaling is fused with the next norm.
        """
        attn = self.self_attn(x, rope, allowed, conv_mask, layer_cache, past)
        r, x2 = self.post_attention_residual_scale.fused_with_norm(attn, h, self.post_attention_layernorm)
        y, z = self.mlp(x2, z_prev)
        h_next, x_next = self.post_mlp_residual_scale.fused_with_norm(y, r, next_norm)
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

    def forward(self, input_ids: torch.Tensor, attention_mask=None, cache: ZayaCache | None = None):
        """Final-normed hidden states [B, T, D] in the weights' dtype."""
        cfg = self.config
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        new_valid = _new_token_mask(attention_mask, B, T, past, input_ids.device)
        if cache is not None:
            cache.reserve(B, T)
            cache.valid[:, past : past + T] = new_valid
            valid = cache.valid[:, : past + T]
        else:
            valid = new_valid
        conv_mask = None if bool(new_valid.all()) else new_valid
        if cache is not None and conv_mask is not None:
            cache.padded = True
        padded = conv_mask is not None or (cache is not None and cache.padded)
        positions = torch.arange(past, past + T, device=input_ids.device).repeat(B)
        cu_seqlens = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=input_ids.device)
        rope = {
            lt: (positions, cu_seqlens, int(cfg.head_dim * cfg.partial_rotary_factor(lt)), cfg.rope_theta(lt))
            for lt in set(cfg.layer_types)
        }
        windows = {cfg.window(i) for i in range(len(self.layers))}
        allowed = {w: _allowed_mask(valid, past, T, w) if padded else None for w in windows}

        h = (self.embed_tokens(input_ids).float() + self.input_hidden_states_bias.float()) * (
            self.input_hidden_states_scale.float()
        )
        x = self.layers[0].input_layernorm(h)
        z = None
        for i, layer in enumerate(self.layers):
            next_norm = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.norm
            layer_cache = None if cache is None else cache.layers[i]
            h, x, z = layer(
                x, h, z, next_norm, rope[cfg.layer_types[i]], allowed[cfg.window(i)], conv_mask, layer_cache, past
            )
        if cache is not None:
            cache.length += T
        return x


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
    ) -> torch.Tensor:
        """input_ids [B, T] int; attention_mask [B, T] or [B, cached + T] (1 = real token, 0 = left padding);
        cache from `new_cache` to continue earlier calls. Returns logits [B, T, vocab] in the weights' dtype."""
        _check_input_ids(input_ids, self.config.vocab_size)
        return self.lm_head(self.model(input_ids, attention_mask, cache))

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
    # Reading the ids costs a host sync on GPU, so only host-resident ids are range-checked here.
    if input_ids.device.type == "cpu" and input_ids.numel() and (
        int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size
    ):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got [{int(input_ids.min())}, {int(input_ids.max())}]")


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


def _allowed_mask(valid_BS: torch.Tensor, past: int, T: int, window: int | None) -> torch.Tensor:
    """[B, T, S]: causal, within the sliding window if any, and only real keys."""
    S = valid_BS.shape[1]
    q_pos = torch.arange(past, past + T, device=valid_BS.device)[:, None]
    k_pos = torch.arange(S, device=valid_BS.device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    return allowed[None] & valid_BS[:, None, :]
