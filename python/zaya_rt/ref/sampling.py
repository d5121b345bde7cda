"""Reference token sampler (the float64 oracle of zaya_rt.ops.sample_tokens): the same rule as the kernel,
written with PyTorch sorts and cumulative sums."""

from __future__ import annotations

import torch


def sampling_keep_mask(logits_V: torch.Tensor, temperature: float, top_k: int, top_p: float,
                       min_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [V] bool, unnormalised probabilities exp(x - max) [V] float64) for one row with temperature > 0:
    top-k (0 = off; ties broken by lower token id), then top-p over the top-k survivors in descending order
    (a token is dropped when the normalised mass before it is >= top_p), then min-p (p >= min_p * p_max)."""
    x = logits_V.double() / float(temperature)
    p = torch.exp(x - x.max())
    V = p.shape[0]
    order = torch.sort(-p, stable=True).indices  # descending probability, lower id first among ties
    keep = torch.ones(V, dtype=torch.bool)
    n = V
    if 0 < top_k < V:
        keep[order[top_k:]] = False
        n = top_k
    if float(top_p) < 1.0:
        kept = order[:n]
        mass = p[kept].sum()
        before = torch.cumsum(p[kept], 0) - p[kept]
        keep[kept[before / mass >= float(top_p)]] = False
    keep &= p >= float(min_p)
    return keep, p


def sample_token(logits_V: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
                 u: float) -> int:
    """The token the sampler picks for uniform u in [0, 1): argmax for temperature 0, else the first kept token
    (ascending id) whose cumulative kept mass exceeds u * total kept mass."""
    if temperature == 0:
        return int(torch.argmax(logits_V.float()))
    keep, p = sampling_keep_mask(logits_V, temperature, top_k, top_p, min_p)
    w = torch.where(keep, p, 0.0)
    cum = torch.cumsum(w, 0)
    target = u * float(cum[-1])
    hits = torch.nonzero((cum > target) & keep)
    return int(hits[0]) if hits.numel() else int(torch.nonzero(keep)[-1])
