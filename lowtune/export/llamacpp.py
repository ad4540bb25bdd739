"""llama.cpp itself, through llama-cpp-python (the optional `llamacpp` extra): load, tokenize, score, quantize.

Export verifies with the real client when it can: the file loads in llama.cpp, tokenizes the probes to
the same ids as the Hugging Face tokenizer, and its next-token distributions and greedy replies match
the source model. llama-cpp-python compiles llama.cpp from source at install time
(`pip install "lowtune[llamacpp]"`); on a CPU that advertises AMX but traps it, build with
`CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lowtune.errors import LowtuneError
from lowtune.logs import debug_requested

INSTALL_HINT = (
    'pip install "lowtune[llamacpp]" (compiles llama.cpp, a few minutes to 20 on 2 cores; '
    "see docs/export.md for CPUs that need CMAKE_ARGS)"
)


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str | None:
    if not available():
        return None
    from importlib.metadata import version as package_version

    return f"llama-cpp-python {package_version('llama-cpp-python')}"


def require(what: str) -> None:
    if not available():
        raise LowtuneError(f"{what} needs llama.cpp, which is not installed: {INSTALL_HINT}")


class Model:
    """A GGUF file loaded in llama.cpp (optionally with LoRA adapters) that scores and generates token ids."""

    def __init__(self, path: str | Path, lora: str | Path | None = None, n_ctx: int = 512):
        require("loading a GGUF in llama.cpp")
        import llama_cpp

        _quiet(llama_cpp)
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                lora_path=str(lora) if lora else None,
                n_ctx=n_ctx,
                n_batch=n_ctx,
                logits_all=True,
                n_threads=os.cpu_count() or 1,
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise LowtuneError(f"llama.cpp could not load {path}{f' with {lora}' if lora else ''}: {e}") from None

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def logits(self, ids: list[int]):
        """Float32 next-token logits at every position of `ids`, as a numpy array [len(ids), vocab]."""
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[: len(ids)].copy()

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
        """Greedy continuation of `ids` (argmax of the logits), ending with a stop token or at the limit."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token in stop_ids:
                break
            self.llm.eval([token])
        return out

    def close(self) -> None:
        self.llm.close()


_LOG_CALLBACK = None


def _quiet(llama_cpp) -> None:
    """Keep llama.cpp's own log lines off the console (LOWTUNE_DEBUG=1 shows them)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None and not debug_requested():
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, None)


def quantize(src: Path, dst: Path, ftype: str) -> None:
    """llama.cpp's own quantizer (llama_model_quantize): `src` GGUF (f16) -> `dst` with LLAMA_FTYPE_MOSTLY_<ftype>."""
    require(f"the {ftype.lower()} quant type")
    import llama_cpp

    _quiet(llama_cpp)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise LowtuneError(f"llama.cpp could not quantize {src} to {ftype.lower()}")
