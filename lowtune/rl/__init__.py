"""What TRL 1.16 does not ship: PPO over one base model carrying policy, value and reward adapters.

`gae`, `whiten` and `kl_penalty` (lowtune.rl.core) are pure tensor functions; the trainer and the
multi-adapter model load transformers and PEFT, so they are imported on first use.
"""

from lowtune.rl.core import gae, kl_penalty, whiten

__all__ = ["ActorCritic", "PPOConfig", "PPOTrainer", "gae", "kl_penalty", "whiten"]


def __getattr__(name):
    if name == "ActorCritic":
        from lowtune.rl.model import ActorCritic

        return ActorCritic
    if name == "PPOConfig":
        from lowtune.rl.config import PPOConfig

        return PPOConfig
    if name == "PPOTrainer":
        from lowtune.rl import ppo

        return getattr(ppo, name)
    raise AttributeError(f"module 'lowtune.rl' has no attribute {name!r}")
