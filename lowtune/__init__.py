"""lowtune: LoRA/QLoRA post-training recipes for one consumer GPU or a CPU."""

from lowtune.errors import LowtuneError

__version__ = "0.1.0"
__all__ = ["LowtuneError", "__version__"]
