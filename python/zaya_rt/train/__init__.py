"""Training utilities (SPEC section 7). So far: router balancing."""

from zaya_rt.train.balancing import RouterBalancer, collect_router_loads

__all__ = ["RouterBalancer", "collect_router_loads"]
