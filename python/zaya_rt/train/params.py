"""Which parameters Muon trains and which AdamW trains (SPEC section 7)."""

from __future__ import annotations

from torch import nn

from zaya_rt.model.modeling import ZayaExperts


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Splits model's trainable parameters into {"muon": [...], "adamw": [...]}, each parameter once.

    Muon: the hidden matrices, i.e. the weights of nn.Linear layers (attention projections, router down
    projection and router MLP) and the expert stacks [E, A, B]. AdamW: everything else: embeddings, the LM head
    (and any weight tied to an embedding), norms, biases, scales, temperatures and conv weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups: model must be a torch.nn.Module, got {type(model).__name__}")
    head = getattr(model, "lm_head", None)
    adamw_only = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if isinstance(head, nn.Linear):
        adamw_only.add(id(head.weight))
    muon, adamw, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            hidden = (isinstance(module, nn.Linear) and name == "weight") or isinstance(module, ZayaExperts)
            (muon if hidden and id(p) not in adamw_only else adamw).append(p)
    return {"muon": muon, "adamw": adamw}
