"""The `train` section of a rejection_sampling recipe or stage: TRL's SFTConfig (it ends in SFT on the kept samples)
plus how the samples are drawn and which are kept.

Apart from the method (lowtune.recipes.rejection_sampling) so that checking a recipe imports no method code; imported
only when such a `train` section is checked, as TRL's own config classes are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from trl import SFTConfig


class Keep(str, enum.Enum):
    SHORTEST = "shortest"
    ALL = "all"


@dataclass
class RejectionSamplingConfig(SFTConfig):
    """SFTConfig plus the sampling: `num_generations` samples of each training prompt at `temperature`, each at
    most `max_completion_length` tokens; the accepted ones are kept (`keep`) and SFT trains on them."""

    num_generations: int = field(default=4, metadata={"help": "samples drawn per training prompt (k)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the samples"})
    max_completion_length: int = field(
        default=128, metadata={"help": "token budget of a sample (one cut off at it rarely ends its answer)"}
    )
    keep: Keep = field(
        default="shortest",
        metadata={"help": "shortest: the shortest accepted sample of each prompt (in tokens); all: every accepted one"},
    )
    sampling_batch_size: int = field(default=8, metadata={"help": "prompts sampled at once, k samples each"})

    def __post_init__(self):
        super().__post_init__()
        self.keep = Keep(self.keep).value
        for name in ("num_generations", "max_completion_length", "sampling_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be above 0 (rejection sampling samples), got {self.temperature}")
