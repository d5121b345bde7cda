"""Training utilities (SPEC section 7): router balancing, answer-preserving trimming, packing and data."""

from zaya_rt.train.balancing import RouterBalancer, collect_router_loads
from zaya_rt.train.pack import pack_indices
from zaya_rt.train.trim import trim_to_budget

__all__ = ["RouterBalancer", "collect_router_loads", "pack_indices", "trim_to_budget"]
