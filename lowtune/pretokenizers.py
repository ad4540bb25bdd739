"""Byte-level BPE pre-tokenizers by the name llama.cpp gives them (`tokenizer.ggml.pre`).

A GGUF file names its pre-tokenizer; llama.cpp's vocabulary loader (src/llama-vocab.cpp) maps the
name to its own split regexes and refuses a name it does not know. So the name must be one llama.cpp
accepts *and* one whose splitting is what the Hugging Face tokenizer does. `PRE_TOKENIZERS` holds,
for each name lowtune writes, the pre-tokenizer as tokenizer.json spells it; the two directions are:

    llama_cpp_name(tokenizer_json)  -> "smollm"        (export: the name to write, or why none fits)
    hf_pre_tokenizer("smollm")      -> a `tokenizers` pre-tokenizer (builtin: restore a GGUF's own)

Facts carried over from llama.cpp (src/llama-vocab.cpp at the commit in LLAMA_CPP_SOURCE):
- "gpt-2": GPT-2's regex alone — a tokenizer.json ByteLevel pre-tokenizer with use_regex.
- "smollm": every digit split off first (`\\p{N}`), then GPT-2's regex — SmolLM/SmolLM2's
  Sequence[Digits(individual_digits), ByteLevel]. The digit split first is what makes "?\\n\\n2" end a
  piece with "\\n\\n" (one token, Ċ Ċ merged) where GPT-2's regex alone gives two "\\n" pieces.
- "llama-bpe": Llama-3's Split regex (digits in runs of up to 3) then ByteLevel without its regex;
  llama.cpp also ignores merges for it (a whole word in the vocabulary is one token), as Llama-3's
  tokenizer.json says with `ignore_merges: true`.
- "qwen2": Qwen2's Split regex (single digits) then ByteLevel without its regex. Qwen2/2.5 add an NFC
  normalizer, which llama.cpp's own converter also writes as "qwen2" (NFC changes only text that is
  not already composed).
A leaf module: imports nothing of lowtune.
"""

from __future__ import annotations

import json

# The llama.cpp source the names and regexes were read from (the vendored tree of llama-cpp-python 0.3.36).
LLAMA_CPP_SOURCE = "llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f, src/llama-vocab.cpp"

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# llama.cpp name -> (tokenizer.json pre_tokenizer, BPE ignore_merges, normalizers allowed).
PRE_TOKENIZERS: dict[str, tuple[dict, bool, tuple[str | None, ...]]] = {
    "gpt-2": (_byte_level(True), False, (None,)),
    "smollm": (
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)]},
        False,
        (None,),
    ),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [_split(_LLAMA3_SPLIT), _byte_level(False)]}, True, (None,)),
    "qwen2": ({"type": "Sequence", "pretokenizers": [_split(_QWEN2_SPLIT), _byte_level(False)]}, False, (None, "NFC")),
}

# Keys that change how text is split; trim_offsets only moves reported offsets.
_IGNORED_KEYS = {"trim_offsets"}


def _canonical(spec: dict | None):
    if isinstance(spec, dict):
        return {k: _canonical(v) for k, v in spec.items() if k not in _IGNORED_KEYS}
    if isinstance(spec, list):
        return [_canonical(v) for v in spec]
    return spec


def llama_cpp_name(tokenizer_json: dict) -> tuple[str | None, str]:
    """The llama.cpp pre-tokenizer name that splits text as this tokenizer.json does, or (None, why not)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"a {model.get('type', 'non-fast')} tokenizer, not byte-level BPE"
    pre = tokenizer_json.get("pre_tokenizer")
    normalizer = (tokenizer_json.get("normalizer") or {}).get("type")
    for name, (spec, ignore_merges, normalizers) in PRE_TOKENIZERS.items():
        if _canonical(pre) != _canonical(spec):
            continue
        if bool(model.get("ignore_merges", False)) != ignore_merges:
            return None, f"its pre-tokenizer is {name!r} but ignore_merges is {model.get('ignore_merges')!r}"
        if normalizer not in normalizers:
            return None, f"its pre-tokenizer is {name!r} but it adds a {normalizer} normalizer"
        return name, ""
    return None, f"pre-tokenizer {json.dumps(pre)[:200]} is none of {', '.join(PRE_TOKENIZERS)}"


def hf_pre_tokenizer(name: str):
    """The `tokenizers` pre-tokenizer object for llama.cpp name `name` (KeyError if lowtune does not know it)."""
    from tokenizers import Tokenizer

    spec = PRE_TOKENIZERS[name][0]
    minimal = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": spec}
    return Tokenizer.from_str(json.dumps(minimal)).pre_tokenizer


def gguf_tokenizer(path):
    """A GGUF file's tokenizer as transformers loads it, with the pre-tokenizer the file names restored.

    transformers' GGUF loader builds the vocabulary and merges faithfully but falls back to GPT-2's
    regex for a `tokenizer.ggml.pre` it does not know (SmolLM's among them). Raises KeyError for a
    name lowtune does not know either.
    """
    from pathlib import Path

    import gguf
    from transformers import AutoTokenizer

    path = Path(path)
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    name = field.contents() if field is not None else "gpt-2"
    pre = hf_pre_tokenizer(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.backend_tokenizer.pre_tokenizer = pre
    return tokenizer
