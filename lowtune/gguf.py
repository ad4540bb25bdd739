"""Export a Hugging Face llama or qwen2 model directory as GGUF, verified, with an Ollama Modelfile.

    export_gguf("merged/", "out/model-q8_0.gguf", quant="q8_0")
    # -> out/model-q8_0.gguf and out/model-q8_0.Modelfile (`ollama create NAME -f out/model-q8_0.Modelfile`)

What is written follows llama.cpp's converter, so llama.cpp and Ollama read the file as one of theirs:
tensor names from the `gguf` package's name map; q_proj/k_proj of llama permuted to GGML's rotary
layout (qwen2 is not permuted); a tied lm_head is omitted (no `output.weight`); 1-D tensors (norms,
biases) stay F32; `q8_0` quantizes every 2-D tensor whose rows split into 32-value blocks, the rest
stay F16. The byte-level BPE tokenizer goes in whole (tokens, types, merges, special ids, add_bos,
chat template), and the GGUF eos is the chat template's end-of-turn token (`<|im_end|>` for ChatML),
so a runtime that stops at eos stops at the end of the answer.

Nothing appears at `out` unless it verifies: the file is written to a temporary name in the same
directory, loaded back with transformers' GGUF loader, its next-token logits compared with the source
model's on chat-templated probes (every position of every probe, float32 on both sides), its reloaded
tokenizer checked to encode the probes to the same ids, and only then renamed into place.

Tolerances (`TOLERANCES`), set from these measurements with margin (2-core Xeon, torch 2.13 CPU,
`DEFAULT_PROBES` chat-templated, every position; "spread" is the standard deviation of the source
logits over the vocabulary, averaged over positions; time is the whole export including verification):

    model (logit spread)    quant  file    max |dlogit|    mean KL  top-1   time
    tiny-random (0.80)      f16    208 kB  3.2e-3 (0.4%)   1.7e-7   100%    <1 s
    tiny-random             q8_0   115 kB  0.11   (14%)    1.4e-4   94%     <1 s
    SmolLM2-135M (3.57)     f16    271 MB  4.1e-2 (1.2%)   3.5e-6   100%    21 s
    SmolLM2-135M            q8_0   145 MB  1.32   (37%)    2.7e-3   97.5%   39 s

    f16:  max |dlogit| <= 5% of spread,  mean KL <= 1e-4
    q8_0: max |dlogit| <= 75% of spread, mean KL <= 1e-2

The max |dlogit| bound is relative to the spread so one bound serves a random 384-token toy and a
real 49k-vocabulary model. The q8_0 bounds are loose because that is what SmolLM2 measures (its
weights, converted from a Q4_1 file, lose the most in the 30 layers' attention and MLP matrices).
A wrong export lands far outside: without the llama q/k permutation, max |dlogit| is 2.7 (330% of
spread), KL 0.08 on tiny-random and 31 (870%), KL 1.2, 59% top-1 on SmolLM2.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

from lowtune.errors import LowtuneError
from lowtune.models import end_of_turn_token

QUANTS = ("f16", "q8_0")

# Hugging Face model_type -> GGUF architecture name.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}

# Per quant: max |logit difference| as a fraction of the source logits' spread, and mean KL in nats.
TOLERANCES = {
    "f16": {"max_abs_logit_diff_rel": 0.05, "mean_kl": 1e-4},
    "q8_0": {"max_abs_logit_diff_rel": 0.75, "mean_kl": 1e-2},
}

DEFAULT_PROBES = [
    "What is 23 + 58?",
    "Write one sentence about the sea.",
    "Hello! Who are you, and what can you do?",
]
# Encoded by both tokenizers besides the probes: digits, spaces, newlines, contractions, non-ASCII.
TOKENIZER_PROBE = (
    "It's 12:34, isn't it?  Numbers 1234567 and 3.14159\n\n\tTabs, caf\u00e9, \U0001f642 and \u65e5\u672c\u8a9e."
)

# Pre-tokenizer regexes as tokenizer.json spells them, keyed by llama.cpp's `tokenizer.ggml.pre` name.
# A plain ByteLevel pre-tokenizer (GPT-2's regex) is "gpt2".
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}

CHATML_OLLAMA_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def modelfile_path(out: str | Path) -> Path:
    """The Modelfile written beside `out`: model-q8_0.gguf -> model-q8_0.Modelfile."""
    return Path(out).with_suffix(".Modelfile")


def export_gguf(model_dir: str | Path, out: str | Path, quant: str = "f16", probes: list[str] | None = None) -> dict:
    """Write the llama/qwen2 model in `model_dir` as GGUF at `out` plus `<stem>.Modelfile`, verified.

    Returns a report: file, quant, bytes, max_abs_logit_diff, mean_kl, top1_agreement, tolerance,
    tokenizer_match, passed, modelfile, stop, eos_token, seconds. Raises LowtuneError for bad input
    and when verification fails; in either case nothing is left at `out` or at the Modelfile path.
    """
    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if quant not in QUANTS:
        raise LowtuneError(f"unknown GGUF quant {quant!r}; use one of {', '.join(QUANTS)}")
    modelfile = modelfile_path(out)
    for path in (out, modelfile):
        if path.exists():
            raise LowtuneError(f"{path} already exists; remove it or choose another --out")
    if not out.parent.is_dir():
        raise LowtuneError(f"output directory {out.parent} does not exist; create it or choose another --out")
    config = _read_config(model_dir)
    arch = ARCHITECTURES[config["model_type"]]
    tokenizer = _load_tokenizer(model_dir)
    vocab = _vocab_metadata(model_dir, tokenizer, config)
    chat = _chat_format(tokenizer, model_dir)

    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp.gguf")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_gguf(tmp, model_dir, config, arch, quant, vocab, chat, tokenizer)
        report = _verify(model_dir, tmp, quant, tokenizer, chat, probes or DEFAULT_PROBES)
        if not report["passed"]:
            raise LowtuneError(
                f"GGUF verification failed for {out}: max |dlogit| {report['max_abs_logit_diff']:.3g}, "
                f"mean KL {report['mean_kl']:.3g}, tokenizer match {report['tokenizer_match']} "
                f"(tolerance {report['tolerance']}); nothing was written — please report this with the model"
            )
        _write_text_atomic(modelfile, _modelfile_text(out.name, chat))
        _chmod_default(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            modelfile.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)
    report.update(
        file=str(out),
        bytes=out.stat().st_size,
        modelfile=str(modelfile),
        stop=chat["stop"],
        eos_token=chat["eot"],
        architecture=arch,
        seconds=round(time.perf_counter() - start, 2),
    )
    return report


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise LowtuneError(f"{model_dir} is not a model directory (no config.json); export a merged model directory")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        named = "/".join(config.get("architectures") or []) or "?"
        raise LowtuneError(
            f"{path}: GGUF export does not support architecture {model_type!r} ({named}); "
            f"supported: {', '.join(ARCHITECTURES)} — `lowtune merge` gives a safetensors model instead"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise LowtuneError(
            f"{path}: GGUF export does not support rope scaling {rope.get('rope_type', rope.get('type'))!r} yet; "
            "`lowtune merge` gives a safetensors model instead"
        )
    return config


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise LowtuneError(f"could not load the tokenizer in {model_dir}: {str(e).splitlines()[0]}") from None


def _vocab_metadata(model_dir: Path, tokenizer, config: dict) -> dict:
    """Tokens, token types, merges and pre-tokenizer name of a byte-level BPE tokenizer, as GGUF stores them."""
    import gguf

    # The tokenizer as transformers runs it, which is not always tokenizer.json: a model-specific class
    # (Qwen2Tokenizer for a qwen2 directory) brings its own pre-tokenizer.
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "backend_tokenizer", None) else {}
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    pre_name = _pre_tokenizer_name(pre)
    if model.get("type") != "BPE" or pre_name is None:
        raise LowtuneError(
            f"{model_dir}: GGUF export supports byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2 style); this one is "
            f"{model.get('type', 'not a fast tokenizer')} with pre-tokenizer {pre.get('type', 'none')} — "
            "`lowtune merge` gives a safetensors model instead"
        )
    ids = tokenizer.get_vocab()
    size = max(config.get("vocab_size") or 0, max(ids.values()) + 1)
    if max(ids.values()) + 1 > (config.get("vocab_size") or size):
        raise LowtuneError(
            f"{model_dir}: the tokenizer has {max(ids.values()) + 1} tokens but the model only "
            f"{config['vocab_size']} embeddings; resize the embeddings before export"
        )
    # Embedding rows with no token (vocabularies padded to a round size) get llama.cpp's placeholders.
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, i in ids.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_name}


def _pre_tokenizer_name(pre: dict) -> str | None:
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2 and steps[1].get("type") == "ByteLevel":
        return _PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def _chat_format(tokenizer, model_dir: Path) -> dict:
    """The chat template, its end-of-turn token, the stop tokens, and whether it is ChatML (and its default system)."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise LowtuneError(
            f"{model_dir} has no chat template; GGUF export needs one (chat_template.jinja or "
            "tokenizer_config.json chat_template) so runtimes format prompts and stop correctly"
        )
    chatml, default_system = _chatml_default_system(tokenizer)
    eot = end_of_turn_token(tokenizer)
    if not eot:
        raise LowtuneError(f"{model_dir}: the tokenizer has no eos token and the chat template no known end-of-turn")
    stop = [eot] + ([tokenizer.eos_token] if tokenizer.eos_token and tokenizer.eos_token != eot else [])
    return {"template": template, "eot": eot, "stop": stop, "chatml": chatml, "default_system": default_system}


def _chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """Whether the template renders ChatML exactly, and the system prompt it inserts when none is given."""

    def chatml(messages):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + (
            "<|im_start|>assistant\n"
        )

    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    user = [{"role": "user", "content": "Q1"}]
    turns = [{"role": "system", "content": "S"}, *user, {"role": "assistant", "content": "A1"}]
    turns.append({"role": "user", "content": "Q2"})
    try:
        if render(turns) != chatml(turns):
            return False, None
        text = render(user)
    except Exception:  # a template that cannot render these messages is not ChatML
        return False, None
    if text == chatml(user):
        return True, None
    head, _, tail = text.partition("<|im_end|>\n")
    if head.startswith("<|im_start|>system\n") and tail == chatml(user):
        return True, head.removeprefix("<|im_start|>system\n")
    return False, None


def _write_gguf(path: Path, model_dir: Path, config: dict, arch: str, quant: str, vocab: dict, chat: dict, tok):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(model_dir.resolve().name)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(len(vocab["tokens"]))
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    eot_id = tok.convert_tokens_to_ids(chat["eot"])
    writer.add_eos_token_id(eot_id)
    writer.add_eot_token_id(eot_id)
    for token_id, add in ((tok.bos_token_id, writer.add_bos_token_id), (tok.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(tok.unk_token_id)
    plain, with_specials = tok("x", add_special_tokens=False)["input_ids"], tok("x")["input_ids"]
    writer.add_add_bos_token(tok.bos_token_id is not None and with_specials[: -len(plain)] == [tok.bos_token_id])
    writer.add_add_eos_token(len(with_specials) > len(plain) and with_specials[-1] == tok.eos_token_id)
    writer.add_chat_template(chat["template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    for hf_name, tensor in _source_tensors(model_dir, config):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LowtuneError(f"{model_dir}: tensor {hf_name} has no GGUF name for {arch}; is this a plain {arch}?")
        data = tensor.float().numpy()
        if arch == "llama" and name.endswith((".attn_q.weight", ".attn_k.weight")):
            data = _permute_rotary(data, heads if ".attn_q." in name else kv_heads)
        if data.ndim == 1:
            writer.add_tensor(name, data.astype(np.float32))
        elif quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _source_tensors(model_dir: Path, config: dict):
    """(name, tensor) from the directory's safetensors, without a lm_head tied to the embeddings."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LowtuneError(f"{model_dir} has no *.safetensors weights; save the model with safetensors first")
    tied = config.get("tie_word_embeddings", True)
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                if (tied and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq"):
                    continue
                yield name, f.get_tensor(name)


def _permute_rotary(weight, n_heads: int):
    """HF's rotate-half q/k rows -> GGML's interleaved pairs, per head (what llama.cpp's converter does)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _verify(model_dir: Path, gguf_path: Path, quant: str, tokenizer, chat: dict, probes: list[str]) -> dict:
    """Load the GGUF back with transformers and compare logits and tokenization with the source."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_loader
    from transformers.utils import logging as hf_logging

    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in probes
    ]
    # Loading draws progress bars (the GGUF loader a raw tqdm one); the library stays quiet.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with mock.patch.object(gguf_loader, "tqdm", lambda iterable, **_: iterable):
            source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            loaded_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer_match = loaded_tokenizer.eos_token == chat["eot"] and all(
        loaded_tokenizer(t, add_special_tokens=False)["input_ids"]
        == tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in [*texts, TOKENIZER_PROBE]
    )
    max_diff, kls, agree, positions, spreads = 0.0, [], 0, 0, []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            a, b = source(input_ids=ids).logits[0].double(), loaded.eval()(input_ids=ids).logits[0].double()
            max_diff = max(max_diff, (a - b).abs().max().item())
            logp, logq = a.log_softmax(-1), b.log_softmax(-1)
            kls.append((logp.exp() * (logp - logq)).sum(-1))
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            positions += ids.shape[1]
            spreads.append(a.std(-1))
    mean_kl = torch.cat(kls).mean().item()
    spread = torch.cat(spreads).mean().item()
    tolerance = TOLERANCES[quant]
    allowed = tolerance["max_abs_logit_diff_rel"] * spread
    passed = tokenizer_match and max_diff <= allowed and mean_kl <= tolerance["mean_kl"] and math.isfinite(mean_kl)
    return {
        "quant": quant,
        "max_abs_logit_diff": max_diff,
        "logit_spread": spread,
        "mean_kl": mean_kl,
        "top1_agreement": agree / positions,
        "probe_tokens": positions,
        "tolerance": {"max_abs_logit_diff": allowed, **tolerance},
        "tokenizer_match": tokenizer_match,
        "passed": passed,
    }


def _modelfile_text(gguf_name: str, chat: dict) -> str:
    lines = [f"# Ollama Modelfile written by lowtune: ollama create NAME -f {Path(gguf_name).stem}.Modelfile"]
    lines.append(f"FROM ./{gguf_name}")
    if chat["chatml"]:
        lines.append(f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""')
        if chat["default_system"]:
            lines.append(f'SYSTEM """{chat["default_system"]}"""')
    else:
        lines.append(
            "# No TEMPLATE: the chat template is not ChatML, so Ollama uses the one it recognizes from the GGUF's "
            "tokenizer.chat_template; check it with `ollama show --template NAME`."
        )
    lines += [f'PARAMETER stop "{token}"' for token in chat["stop"]]
    return "\n".join(lines) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _chmod_default(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _chmod_default(path: Path) -> None:
    """mkstemp creates files 0600; give them the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
