"""RL with verifiable rewards on Engine rollouts (SPEC section 7): the objective, reward checkers, the trainer."""

from zaya_rt.train.rl.objective import (ADVANTAGE_KINDS, advantages, compression_ratio, informative_groups,
                                        policy_loss, repetition_canary, trust_region_keep)

__all__ = ["ADVANTAGE_KINDS", "advantages", "compression_ratio", "informative_groups", "policy_loss",
           "repetition_canary", "trust_region_keep"]
