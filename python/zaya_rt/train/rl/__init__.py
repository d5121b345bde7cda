"""RL with verifiable rewards on Engine rollouts (SPEC section 7): the objective (objective.py), reward
checkers (rewards.py) and their code sandbox (sandbox.py), the config (config.py) and `RLTrainer` (trainer.py,
also `zaya_rt.train.RLTrainer`)."""

from zaya_rt.train.rl.objective import (ADVANTAGE_KINDS, advantages, compression_ratio, informative_groups,
                                        policy_loss, repetition_canary, trust_region_keep)
from zaya_rt.train.rl.rewards import (REWARD_KINDS, CodeReward, ExactAnswerReward, MathVerifyReward, extract_code,
                                      make_reward)
from zaya_rt.train.rl.sandbox import SandboxResult, run_sandboxed

__all__ = ["ADVANTAGE_KINDS", "REWARD_KINDS", "CodeReward", "ExactAnswerReward", "MathVerifyReward", "SandboxResult",
           "advantages", "compression_ratio", "extract_code", "informative_groups", "make_reward", "policy_loss",
           "repetition_canary", "run_sandboxed", "trust_region_keep"]
