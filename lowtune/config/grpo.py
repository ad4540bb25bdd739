"""The `train` section of a GRPO recipe or stage: TRL's GRPOConfig plus what lowtune's GRPO trainer adds.

Apart from the method (lowtune.recipes.grpo) so that checking a recipe imports no method code; imported only when
such a `train` section is checked, as TRL's own config classes are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig as TRLGRPOConfig


@dataclass
class GRPOConfig(TRLGRPOConfig):
    """TRL's GRPOConfig plus `skip_zero_advantage` and `folded_generation`."""

    skip_zero_advantage: bool = field(
        default=True,
        metadata={
            "help": "leave completions whose advantage is 0 (a group that all scored the same) out of the loss pass "
            "where the gradient stays the same: beta 0 and loss_type dapo or cispo (lowtune.recipes.grpo)"
        },
    )
    folded_generation: bool | None = field(
        default=None,
        metadata={
            "help": "sample the completions with the LoRA adapter folded into a copy of the weights, the same model "
            "in fewer matmuls (a full-precision base with plain LoRA; lowtune.models.folded_lora): null (on CPU, "
            "where it is measured), true (wherever it can), false"
        },
    )
