"""Every model PPO needs, on one base: policy, value and reward LoRA adapters; reference = adapters off.

    policy     the `default` adapter (trained): saved at the root of the adapter directory, so merge,
               export and plain `PeftModel.from_pretrained` see an ordinary causal-LM adapter
    value      the `value` adapter + a scalar head on the last hidden state (trained), initialized
               from the reward adapter and its score head when one is given
    reward     the `reward` adapter + its score head (frozen), from a reward run (`lowtune train reward`)
    reference  the base with every adapter disabled

Only one adapter is active in a forward pass; `hidden(role, ...)` switches to it and back to the
right `requires_grad` flags (PEFT's `set_adapter` makes the active adapter alone trainable, and
re-enabling adapters after `disable_adapter()` does the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lowtune.errors import LowtuneError

POLICY, VALUE, REWARD, REFERENCE = "default", "value", "reward", "reference"
VALUE_HEAD_FILE = "value_head.safetensors"


class ActorCritic(nn.Module):
    accepts_loss_kwargs = False  # the PPO trainer scales the loss for gradient accumulation itself

    def __init__(self, peft_model, value_head: nn.Linear, score_head: nn.Linear | None = None):
        super().__init__()
        self.peft = peft_model
        self.value_head = value_head
        self.score_head = score_head
        if score_head is not None:
            score_head.requires_grad_(False)
        self.restore_grad_flags()

    # ------------------------------------------------------------ building

    @classmethod
    def build(cls, peft_model, reward_dir: Path | None = None) -> ActorCritic:
        """Add the value adapter (and the reward adapter from `reward_dir`) to a PEFT model whose
        `default` adapter is the policy."""
        base = peft_model.get_base_model()
        hidden = base.config.get_text_config().hidden_size
        device = base.get_output_embeddings().weight.device
        value_head = nn.Linear(hidden, 1, device=device, dtype=torch.float32)
        nn.init.zeros_(value_head.weight)
        nn.init.zeros_(value_head.bias)
        score_head = None
        if reward_dir is None:
            peft_model.add_adapter(VALUE, peft_model.peft_config[POLICY])
        else:
            config, lora, score = _read_reward_adapter(reward_dir)
            for name in (REWARD, VALUE):  # the critic starts as the reward model (Ouyang et al. 2022)
                peft_model.add_adapter(name, config)
                _load_lora(peft_model, lora, name, reward_dir)
            score_head = nn.Linear(hidden, 1, bias=False, device=device, dtype=torch.float32)
            score_head.weight.data.copy_(score)
            value_head.weight.data.copy_(score)
        peft_model.set_adapter(POLICY)
        return cls(peft_model, value_head, score_head)

    # ------------------------------------------------------------ forward passes

    @property
    def has_reward_adapter(self) -> bool:
        return self.score_head is not None

    def hidden(self, role: str, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """Last hidden states `[B, L, H]` of the model in `role` (policy, value, reward or reference)."""
        decoder = self.peft.get_base_model().get_decoder()
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if role == REFERENCE:
            with self.peft.disable_adapter():
                out = decoder(**kwargs).last_hidden_state
            self.restore_grad_flags()
            return out
        self.activate(role)
        return decoder(**kwargs).last_hidden_state

    def activate(self, role: str) -> None:
        if role not in self.peft.peft_config:
            raise ValueError(f"no {role} adapter on this model")
        if self.peft.active_adapter != role:
            self.peft.set_adapter(role)
            self.restore_grad_flags()

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.float()).squeeze(-1)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score_head(hidden.float()).squeeze(-1)

    @property
    def lm_head(self) -> nn.Module:
        return self.peft.get_base_model().get_output_embeddings()

    @property
    def quantization_method(self):
        """The base's (bitsandbytes for NF4): tells transformers' Trainer not to move a quantized model."""
        return getattr(self.peft.get_base_model(), "quantization_method", None)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.peft.get_base_model().gradient_checkpointing_enable(**kwargs)

    def restore_grad_flags(self) -> None:
        """Policy and value adapters trainable, the reward adapter frozen (PEFT's adapter switches reset them)."""
        self.peft.base_model.set_requires_grad([POLICY, VALUE], True)
        if REWARD in self.peft.peft_config:
            self.peft.base_model.set_requires_grad([REWARD], False)

    # ------------------------------------------------------------ saving and loading

    def save(self, directory: str | Path) -> None:
        """The policy adapter at `directory` (PEFT format), the value adapter and head in `directory/value`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.peft.save_pretrained(str(directory), selected_adapters=[POLICY])
        self.peft.save_pretrained(str(directory), selected_adapters=[VALUE])  # PEFT writes it to value/
        save_file(
            {k: v.contiguous() for k, v in self.value_head.state_dict().items()}, directory / VALUE / VALUE_HEAD_FILE
        )

    def load(self, directory: str | Path) -> None:
        """Restore the trained weights that `save` wrote (resuming a run)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        for name, folder in ((POLICY, directory), (VALUE, directory / VALUE)):
            weights = load_file(folder / "adapter_model.safetensors", device=str(self.lm_head.weight.device))
            set_peft_model_state_dict(self.peft, weights, adapter_name=name)
        self.value_head.load_state_dict(load_file(directory / VALUE / VALUE_HEAD_FILE))
        self.peft.set_adapter(POLICY)
        self.restore_grad_flags()


def require_reward_adapter(reward_dir: Path) -> None:
    """LowtuneError unless `reward_dir` is a reward model's adapter (a sequence-classification LoRA)."""
    from lowtune.runs import adapter_task

    if adapter_task(reward_dir) != "SEQ_CLS":
        raise LowtuneError(
            f"rewards.model: {reward_dir} is not a reward model adapter (train one with `lowtune train reward`)"
        )


def _read_reward_adapter(reward_dir: Path):
    """A reward run's adapter as (LoRA config for the causal-LM base, LoRA weights, score head weight)."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    from lowtune.models import require_safetensors

    require_reward_adapter(reward_dir)
    require_safetensors(reward_dir)
    raw = json.loads((reward_dir / "adapter_config.json").read_text())
    if raw.get("peft_type") != "LORA":
        raise LowtuneError(
            f"rewards.model: {reward_dir} is a {raw.get('peft_type')} adapter; PPO takes LoRA reward adapters"
        )
    known = set(LoraConfig.__dataclass_fields__)
    fields = {
        k: v
        for k, v in raw.items()
        if k in known and k not in ("modules_to_save", "task_type", "base_model_name_or_path")
    }
    config = LoraConfig(**fields, task_type="CAUSAL_LM")
    weights = load_file(reward_dir / "adapter_model.safetensors")
    score = [v for k, v in weights.items() if k.endswith("score.weight")]
    if len(score) != 1:
        raise LowtuneError(f"rewards.model: {reward_dir} has no score head weight (score.weight)")
    lora = {k: v for k, v in weights.items() if "lora_" in k}
    return config, lora, score[0].float()


def _load_lora(peft_model, lora: dict, name: str, reward_dir: Path) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, lora, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
    if missing or result.unexpected_keys:
        raise LowtuneError(
            f"rewards.model: the adapter in {reward_dir} does not fit this base model "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected weights); "
            "train the reward model on the same base as the policy"
        )
