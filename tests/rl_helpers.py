"""Shared pieces of the RL tests."""

import torch

from zaya_rt.model.modeling import ZayaRouter
from zaya_rt.runtime import tiny_model


def routed_tiny_model(seed: int) -> torch.nn.Module:
    """The tiny fp32 model with weights that make routing depend on the token: init_random's small embeddings and
    router weights send every token of a layer to one expert, which would make route checks vacuous."""
    model = tiny_model(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)
        for r in model.modules():
            if isinstance(r, ZayaRouter):
                mlp = r.router_mlp
                for lin, gain in ((r.down_proj, 1.0), (mlp.fc1, 1.0), (mlp.fc2, 1.0), (mlp.out_proj, 3.0)):
                    w = torch.randn(lin.weight.shape, generator=gen) * gain / lin.weight.shape[1] ** 0.5
                    lin.weight.copy_(w)
    return model
