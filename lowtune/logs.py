"""Library log lines that read as errors to a new user but are not: off the console unless debug output is asked.

Debug output: `LOWTUNE_DEBUG=1` in the environment, or Python logging set to DEBUG for the library's logger.
Installed when the lowtune package is imported, before anything of lowtune imports the library.
"""

from __future__ import annotations

import logging
import os

DEBUG_ENV = "LOWTUNE_DEBUG"

# bitsandbytes 0.50 warns at import, on CPUs with AVX512-BF16, when the optional `kernels` package (a faster CPU
# 4-bit matmul from the Hub) is missing: "Failed to load CPU gemm_4bit_forward from kernels-community: No module
# named 'kernels'. ...". Its own fallback then runs; nothing is wrong.
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def debug_requested() -> bool:
    """Whether LOWTUNE_DEBUG asks for debug output (set, and not 0/false/no/off)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


class HideMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`, unless debug output is asked for."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self.prefix)):
            return True
        return debug_requested() or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_libraries() -> None:
    """Install the filters (once; importing the library later finds its logger already filtered)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, HideMessage) and f.prefix == BNB_KERNELS_MESSAGE for f in logger.filters):
        logger.addFilter(HideMessage(BNB_KERNELS_MESSAGE))
