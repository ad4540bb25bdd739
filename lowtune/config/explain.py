"""The rows of `lowtune recipes --explain`: every recipe field with its default and doc."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from lowtune.config.schema import SECTIONS, Recipe, train_config_class

# The `train` fields worth listing; any other field of the method's config class works too.
_TRAIN_HIGHLIGHTS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "logging_steps",
    "save_steps",
    "max_length",
    "packing",
    "completion_only_loss",
    "loss_type",
    "precompute_ref_log_probs",
    "seed",
    # PPO (lowtune.rl.config.PPOConfig)
    "num_mini_batches",
    "num_ppo_epochs",
    "max_new_tokens",
    "temperature",
    "kl_coef",
    "kl_estimator",
    "kl_target",
    "gamma",
    "lam",
    "cliprange",
    "cliprange_value",
    "vf_coef",
    "missing_eos_penalty",
    # GRPO (lowtune.config.grpo.GRPOConfig)
    "skip_zero_advantage",
    "folded_generation",
    # rejection sampling (lowtune.config.rejection_sampling.RejectionSamplingConfig)
    "num_generations",
    "max_completion_length",
    "keep",
    "sampling_batch_size",
)


def explain(method: str | None = None, train_defaults: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(field, default, doc) rows for every recipe field, for `lowtune recipes --explain`.

    `train_defaults` are lowtune's own defaults for `train` fields; they are shown instead of TRL's.
    """
    train_defaults = train_defaults or {}
    rows = []
    for section in dataclasses.fields(Recipe):
        cls = SECTIONS[section.name]
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                rows.append((f"{section.name}.{f.name}", repr(default), f.metadata.get("doc", "")))
        else:
            rows.append((section.name, "", section.metadata.get("doc", "")))
    if method:
        cls = train_config_class(method)
        for f in dataclasses.fields(cls):
            if f.init and (f.name in _TRAIN_HIGHLIGHTS or f.name in train_defaults):
                help_ = (f.metadata.get("help") or "").split(". ")[0]
                default = f"{train_defaults[f.name]!r} (lowtune)" if f.name in train_defaults else repr(f.default)
                rows.append((f"train.{f.name}", default, help_))
        rows.append(("train.*", "", f"any other field of {_public_name(cls)}"))
    return rows


def _public_name(cls: type) -> str:
    """`trl.SFTConfig` where the top-level package exports the class, else the first package on its module's path
    that imports it (`trl.experimental.orpo.ORPOConfig`), else its full dotted name."""
    top = cls.__module__.partition(".")[0]
    if getattr(sys.modules.get(top), cls.__name__, None) is cls:
        return f"{top}.{cls.__name__}"
    parts = cls.__module__.split(".")
    for package in (".".join(parts[:i]) for i in range(2, len(parts))):
        module = sys.modules.get(package)
        if module is not None and vars(module).get(cls.__name__) is cls:
            return f"{package}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"
