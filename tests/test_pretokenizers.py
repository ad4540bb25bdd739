"""Pre-tokenizer names: only names llama.cpp accepts, each splitting text as the tokenizer it names."""

import json
from pathlib import Path

import pytest

from lowtune.pretokenizers import PRE_TOKENIZERS, hf_pre_tokenizer, llama_cpp_name

ACCEPTED = Path(__file__).parent / "data" / "llama_cpp_pre_tokenizers.txt"


def _accepted() -> set[str]:
    return {line.strip() for line in ACCEPTED.read_text().splitlines() if line.strip() and not line.startswith("#")}


def test_every_name_lowtune_writes_is_one_llama_cpp_accepts():
    accepted = _accepted()
    assert {"gpt-2", "smollm", "llama-bpe", "qwen2"} <= set(PRE_TOKENIZERS)
    assert set(PRE_TOKENIZERS) <= accepted
    assert "gpt2" not in accepted  # what lowtune wrote before, refused by llama.cpp's loader


@pytest.mark.parametrize("name", PRE_TOKENIZERS)
def test_each_name_maps_back_from_its_tokenizer(name, bpe_tokenizer):
    tokenizer = bpe_tokenizer(name, "llama3" if name == "llama-bpe" else "chatml")
    assert llama_cpp_name(json.loads(tokenizer.backend_tokenizer.to_str())) == (name, "")


def _pieces(name: str, text: str) -> list[str]:
    return [piece for piece, _ in hf_pre_tokenizer(name).pre_tokenize_str(text)]


def test_the_names_split_digits_and_newlines_as_their_models_do():
    # SmolLM splits every digit off first, so "\n\n" ends a piece (one token) instead of two "\n" pieces.
    assert _pieces("smollm", "?\n\n23") == ["?", "ĊĊ", "2", "3"]
    assert _pieces("gpt-2", "?\n\n23") == ["?", "Ċ", "Ċ", "23"]
    assert _pieces("llama-bpe", "1234567") == ["123", "456", "7"]
    assert _pieces("qwen2", "1234") == ["1", "2", "3", "4"]


def test_a_tokenizer_with_no_llama_cpp_name_is_refused_with_the_reason(bpe_tokenizer):
    spec = json.loads(bpe_tokenizer("gpt-2").backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    name, why = llama_cpp_name(spec)
    assert name is None and "Metaspace" in why
    # The right regex but the wrong merge rule: llama.cpp ignores merges for llama-bpe, so it would differ.
    spec = json.loads(bpe_tokenizer("llama-bpe", "llama3").backend_tokenizer.to_str())
    spec["model"]["ignore_merges"] = False
    assert llama_cpp_name(spec) == (None, "its pre-tokenizer is 'llama-bpe' but ignore_merges is False")
    spec["model"]["type"] = "Unigram"
    assert llama_cpp_name(spec)[0] is None
