"""Training (SPEC section 7): the Trainer, the RLTrainer (train.rl), Muon, router balancing, answer-preserving trimming, packing and data."""

from zaya_rt.train.balancing import RouterBalancer, collect_router_loads
from zaya_rt.train.muon import Muon
from zaya_rt.train.pack import pack_indices
from zaya_rt.train.params import param_groups
from zaya_rt.train.trainer import Trainer
from zaya_rt.train.trim import trim_to_budget


def __getattr__(name: str):
    if name == "RLTrainer":  # lazy: it needs the runtime (Engine), which `import zaya_rt` does not load
        from zaya_rt.train.rl.trainer import RLTrainer

        return RLTrainer
    raise AttributeError(f"module 'zaya_rt.train' has no attribute {name!r}")


__all__ = ["Muon", "RLTrainer", "RouterBalancer", "Trainer", "collect_router_loads", "pack_indices", "param_groups",
           "trim_to_budget"]
