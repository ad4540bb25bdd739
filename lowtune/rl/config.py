"""lowtune's PPO arguments: transformers' TrainingArguments plus PPO's own (the `train` section of a ppo recipe).

Apart from the trainer (lowtune.rl.ppo) so that checking a recipe imports no trainer code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from lowtune.rl import core


@dataclass
class PPOConfig(TrainingArguments):
    """Training arguments for lowtune's PPO (all of transformers' TrainingArguments, plus these)."""

    per_device_train_batch_size: int = field(default=8, metadata={"help": "responses per minibatch forward/backward"})
    num_mini_batches: int = field(
        default=2, metadata={"help": "optimizer steps per pass over a rollout; rollout size = "
                             "per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches"}
    )  # fmt: skip
    num_ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout"})
    max_new_tokens: int = field(default=64, metadata={"help": "response length limit"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (log-probs use it too)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta: weight of the per-token KL penalty"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log ratio), k2 or k3 (Schulman 2020)"})
    kl_target: float | None = field(
        default=None, metadata={"help": "adapt beta toward this KL per response (Ziegler et al. 2019); null: fixed"}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL horizon, in responses"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip epsilon"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "subtracted from the score of a response cut off at max_new_tokens"}
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten per-token rewards before GAE"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept: reward functions read the columns"})

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in core.KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator {self.kl_estimator!r} is unknown; use one of {', '.join(core.KL_ESTIMATORS)}"
            )
        for name in ("num_mini_batches", "num_ppo_epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def rollout_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    @property
    def micro_steps_per_rollout(self) -> int:
        return self.num_ppo_epochs * self.num_mini_batches * self.gradient_accumulation_steps
