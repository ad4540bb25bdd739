"""Memory-efficient kernels. A leaf package: it imports nothing else of lowtune."""

from .logprobs import token_logprobs

__all__ = ["token_logprobs"]
