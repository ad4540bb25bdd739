"""Recipe schema: typed dataclasses, YAML loading, `a.b=c` overrides, validation.

A recipe is one YAML file with the sections `method`, `model`, `lora`, `data`, `train`, `rewards`,
`eval`, `augment`, `budget` and `output`; a pipeline adds `stages`, a list of methods each with its own `data`,
`train`, `rewards`, `eval` (...) merged over the recipe's. Every field is documented, with its rule, where it is
declared in `schema.py` (`lowtune recipes --explain` prints them). The `train` section is passed through to TRL's
config class for the method (e.g. `trl.SFTConfig`), so every TRL/transformers training argument works there and is
checked against that class.

- `schema`: the section dataclasses and their checks
- `load`: YAML, overrides, and building a checked `Recipe`
- `coerce`: YAML values converted to the declared types
- `explain`: the rows of `lowtune recipes --explain`

Importing this package does not import trl: a method's config class is imported when it is first needed.
"""

from lowtune.config.explain import explain
from lowtune.config.load import load_recipe
from lowtune.config.schema import (
    FRESH_ADAPTER_METHODS,
    REASONING_METHODS,
    REASONING_PROMPT,
    SECTIONS,
    STAGE_SECTIONS,
    TRAIN_CONFIG_CLASSES,
    AugmentConfig,
    BudgetConfig,
    DataConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    Recipe,
    RewardsConfig,
    Section,
    Stage,
    train_config_class,
)

__all__ = [
    "FRESH_ADAPTER_METHODS",
    "REASONING_METHODS",
    "REASONING_PROMPT",
    "SECTIONS",
    "STAGE_SECTIONS",
    "TRAIN_CONFIG_CLASSES",
    "AugmentConfig",
    "BudgetConfig",
    "DataConfig",
    "EvalConfig",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "Recipe",
    "RewardsConfig",
    "Section",
    "Stage",
    "explain",
    "load_recipe",
    "train_config_class",
]
