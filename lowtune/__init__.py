"""lowtune: LoRA/QLoRA post-training recipes for one consumer GPU or a CPU."""

from lowtune.errors import LowtuneError
from lowtune.logs import quiet_libraries

quiet_libraries()  # before any lowtune module imports bitsandbytes (through peft, transformers)

__version__ = "0.1.0"
__all__ = ["LowtuneError", "__version__"]
