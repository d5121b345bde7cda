"""Reference expert block (SPEC section 3, step 7), top-k routing with a skip index."""

import torch
import torch.nn.functional as F


def moe_experts(
    hidden_TD: torch.Tensor,
    expert_index: torch.Tensor,
    gate: torch.Tensor,
    gate_up_proj_EFD: torch.Tensor,
    down_proj_EDI: torch.Tensor,
) -> torch.Tensor:
    """hidden [T, D]; expert_index and gate [T] or [T, k] (index E = skip: no work, no output);
    gate_up_proj [E, 2I, D] gate rows first; down_proj [E, D, I].

    y_t = sum over slots of gate * down_e(SiLU(gate_e x_t) * up_e x_t). Returns [T, D] in hidden's dtype.
    """
    T = hidden_TD.shape[0]
    top_k = 1 if expert_index.dim() == 1 else expert_index.shape[1]
    index_Tk = expert_index.reshape(T, top_k)
    gate_Tk = gate.reshape(T, top_k)
    out = torch.zeros_like(hidden_TD)
    for e in range(gate_up_proj_EFD.shape[0]):
        tokens, slots = torch.where(index_Tk == e)
        if tokens.numel() == 0:
            continue
        gate_part, up_part = F.linear(hidden_TD[tokens], gate_up_proj_EFD[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate_part) * up_part, down_proj_EDI[e])
        out.index_add_(0, tokens, (y * gate_Tk[tokens, slots, None]).to(out.dtype))
    return out
