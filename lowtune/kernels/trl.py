"""lowtune's per-token log-prob kernel inside TRL's trainers (kept apart from the kernel, as Liger keeps its
ops apart from its transformers patches).

TRL 1.16's fused LM head computes per-token log-probs and entropies through `ChunkedLogProbFunction`;
`patched()` swaps in a stand-in that routes those two outputs through `token_logprobs` and any other output
TRL asks for (DPO's mean_logits, is_top1, ...) to TRL's own function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TokenLogprobsForTRL:
    """Stands in for TRL 1.16's ChunkedLogProbFunction (same `apply` signature and 5 outputs)."""

    trl_function = None

    @classmethod
    def apply(cls, hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs):
        if not set(outputs) <= {"log_probs", "entropy"}:
            return cls.trl_function.apply(
                hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs
            )
        from lowtune import kernels

        entropy = "entropy" in outputs
        out = kernels.token_logprobs(
            hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
            logit_scale=1.0 if logit_scale is None else logit_scale, return_entropy=entropy,
        )  # fmt: skip
        logp, ent = out if entropy else (out, None)
        return logp, ent, None, None, None


@contextlib.contextmanager
def patched(kernel: str) -> Iterator[str]:
    """While active, TRL's fused LM head computes per-token log-probs with `kernel`: "lowtune" (this package's
    `token_logprobs`) or "trl" (TRL's own, left as it is). Yields the kernel in use."""
    if kernel == "trl":
        yield "trl"
        return
    import trl.trainer.utils as trl_utils

    original = trl_utils._ChunkedLogProbFunction
    TokenLogprobsForTRL.trl_function = original
    trl_utils._ChunkedLogProbFunction = TokenLogprobsForTRL
    try:
        yield "lowtune"
    finally:
        trl_utils._ChunkedLogProbFunction = original
