"""GGUF export: round trips through transformers' GGUF loader, the Modelfile, and bad input."""

import json
import math
import os
import shutil

import pytest
import torch

from lowtune import builtin
from lowtune.errors import LowtuneError
from lowtune.export import gguf as lowtune_gguf
from lowtune.export.gguf import QUANTS, STRUCTURE_KL, export_gguf


def _randomize_biases(model_dir):
    """HF initializes biases to zero, which would hide a bias the export drops or misplaces."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    weights = load_file(path)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if name.endswith(".bias"):
            weights[name] = torch.randn(tensor.shape, generator=generator) * 0.5
    save_file(weights, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tiny_qwen2(tiny_path, tmp_path_factory):
    """A 2-layer random qwen2 (q/k/v biases, no rotary permutation) with tiny-random's ChatML tokenizer."""
    from transformers import AutoTokenizer

    path = _tiny_model(tmp_path_factory.mktemp("qwen2") / "qwen2", AutoTokenizer.from_pretrained(tiny_path), "qwen2")
    _randomize_biases(path)
    return path


@pytest.fixture(scope="module")
def tiny_f16(tiny_path, tmp_path_factory):
    return export_gguf(tiny_path, tmp_path_factory.mktemp("f16") / "tiny-f16.gguf", "f16")


def _check_round_trip(report, source_dir, quant):
    """The report's figures, and the file as plain transformers and the gguf reader see it."""
    import gguf
    from transformers import AutoTokenizer

    assert report["passed"] and report["tokenizer_match"] and report["quant"] == quant
    assert report["mean_kl"] <= QUANTS[quant].max_mean_kl
    if quant == "f16":  # q8_0 may flip near-ties of a random model's flat distribution
        assert report["top1_agreement"] == 1.0
    path = report["file"]
    assert os.path.getsize(path) == report["bytes"]
    assert sorted(os.listdir(os.path.dirname(path))) == sorted(
        [os.path.basename(path), os.path.basename(report["modelfile"])]
    )

    reader = gguf.GGUFReader(path)
    field = reader.fields
    tokens = [str(bytes(field["tokenizer.ggml.tokens"].parts[i]), "utf-8") for i in field["tokenizer.ggml.tokens"].data]
    eos = int(field["tokenizer.ggml.eos_token_id"].parts[-1][0])
    assert tokens[eos] == "<|im_end|>"
    template = str(bytes(field["tokenizer.chat_template"].parts[-1]), "utf-8")
    assert "<|im_start|>" in template
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied lm_head, as llama.cpp writes it
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == {"f16": "F16", "q8_0": "Q8_0"}[quant]

    source = AutoTokenizer.from_pretrained(source_dir)
    loaded = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    messages = [{"role": "user", "content": "What is 12 + 34? Answer: 46."}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).endswith(
        "<|im_start|>assistant\n"
    )
    ids = source.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    again = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert again["input_ids"] == ids["input_ids"]
    assert loaded.eos_token == "<|im_end|>"


def test_f16_round_trip_matches_the_source(tiny_f16, tiny_path):
    _check_round_trip(tiny_f16, tiny_path, "f16")


def test_q8_0_round_trip_matches_the_source(tiny_path, tmp_path):
    report = export_gguf(tiny_path, tmp_path / "tiny-q8_0.gguf", "q8_0")
    _check_round_trip(report, tiny_path, "q8_0")
    assert report["bytes"] < 0.6 * os.path.getsize(tiny_path / "model.safetensors")


def test_qwen2_round_trip_keeps_biases_and_layout(tiny_qwen2, tmp_path):
    report = export_gguf(tiny_qwen2, tmp_path / "qwen2.gguf", "f16")
    _check_round_trip(report, tiny_qwen2, "f16")
    assert report["architecture"] == "qwen2"
    assert report["max_abs_logit_diff"] < 0.01 * report["logit_spread"]


def test_modelfile_names_the_end_of_turn_stop_token(tiny_f16):
    text = open(tiny_f16["modelfile"]).read()
    assert tiny_f16["modelfile"].endswith("tiny-f16.Modelfile")
    assert "FROM ./tiny-f16.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and tiny_f16["stop"] == ["<|im_end|>"]
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    assert text.count('"""') == 2  # a TEMPLATE, and no SYSTEM: tiny-random's template has no default system prompt


@pytest.mark.parametrize("quant", ["f16", "q4_0"])
def test_a_wrong_export_fails_verification_and_leaves_nothing(quant, tiny_path, tmp_path, monkeypatch):
    # Without llama's q/k permutation the reloaded model's logits move by ~3 (KL ~0.08) on tiny-random;
    # at 4 bits, where the quantization alone costs as much, the structure check still sees it.
    monkeypatch.setattr(lowtune_gguf, "permute_rotary", lambda weight, n_heads: weight)
    with pytest.raises(LowtuneError, match="verification failed.*weights are not the model's"):
        export_gguf(tiny_path, tmp_path / "bad.gguf", quant)
    assert os.listdir(tmp_path) == []


def test_a_tokenizer_mismatch_fails_verification(tiny_qwen2, tmp_path, monkeypatch):
    # Qwen2Tokenizer splits digits one by one; a GGUF claiming GPT-2 pre-tokenization would merge them.
    monkeypatch.setattr(lowtune_gguf, "llama_cpp_name", lambda spec: ("gpt-2", ""))
    with pytest.raises(LowtuneError, match="tokenizer differs"):
        export_gguf(tiny_qwen2, tmp_path / "bad.gguf", "f16")
    assert os.listdir(tmp_path) == []


def test_unknown_architecture_is_refused_by_name(tiny_path, tmp_path):
    model = tmp_path / "neox"
    shutil.copytree(tiny_path, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(LowtuneError, match=r"'gpt_neox' \(GPTNeoXForCausalLM\).*supported: llama, qwen2") as error:
        export_gguf(model, tmp_path / "out.gguf")
    assert "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["neox"]


@pytest.mark.parametrize("existing", ["out.gguf", "out.Modelfile"])
def test_an_existing_output_is_never_overwritten(tiny_path, tmp_path, existing):
    (tmp_path / existing).write_text("keep me")
    with pytest.raises(LowtuneError, match=f"{existing} already exists"):
        export_gguf(tiny_path, tmp_path / "out.gguf")
    assert (tmp_path / existing).read_text() == "keep me"
    assert os.listdir(tmp_path) == [existing]


def test_unknown_quant_is_refused(tiny_path, tmp_path):
    with pytest.raises(LowtuneError, match="q4_k.*f16, bf16, q8_0"):
        export_gguf(tiny_path, tmp_path / "out.gguf", "q4_k")


@pytest.mark.skipif(
    not os.environ.get("LOWTUNE_TEST_SMOLLM2_GGUF"),
    reason="about 60 s (SmolLM2 conversion + export); set LOWTUNE_TEST_SMOLLM2_GGUF=1 to run",
)
def test_smollm2_f16_round_trip(tmp_path):

    path = builtin.ensure("smollm2-135m-instruct")
    report = export_gguf(path, tmp_path / "smollm2-f16.gguf", "f16")
    _check_round_trip(report, path, "f16")
    text = open(report["modelfile"]).read()
    assert "TEMPLATE" in text and "You are a helpful AI assistant named SmolLM" in text


def _tiny_model(path, tokenizer, model_type="llama", **config):
    """A 2-layer random model of `model_type` with `tokenizer`, saved at `path`."""
    import transformers

    prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type]
    cls_config, cls_model = getattr(transformers, f"{prefix}Config"), getattr(transformers, f"{prefix}ForCausalLM")
    settings = dict(
        vocab_size=len(tokenizer),
        **builtin.TINY_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(config)
    torch.manual_seed(0)
    cls_model(cls_config(**settings)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that most of a 16-dim head's frequencies are rescaled and a missing rope_freqs shows.
    "original_max_position_embeddings": 64,
}


def _llama3_factors(rope, head_dim):
    """Meta's Llama-3.1 rope rule, by hand: the divisor of each inverse frequency."""
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        low, high = (
            rope["original_max_position_embeddings"] / rope[k] for k in ("low_freq_factor", "high_freq_factor")
        )
        if wavelen < high:
            factors.append(1.0)
        elif wavelen > low:
            factors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return factors


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory):
    """A Llama-3.x-shaped model: llama3 rope scaling, a llama-bpe tokenizer adding BOS, the Llama-3.2 template."""
    from conftest import LLAMA32_TEMPLATE, make_bpe_tokenizer

    tokenizer = make_bpe_tokenizer("llama-bpe", "llama3", LLAMA32_TEMPLATE)
    return _tiny_model(tmp_path_factory.mktemp("llama3") / "llama3", tokenizer, rope_parameters=dict(LLAMA3_ROPE))


def _field(reader, key):
    return reader.fields[key].contents()


def test_llama3_rope_scaling_exports_as_rope_freqs(tiny_llama3, tmp_path):
    import gguf

    report = export_gguf(tiny_llama3, tmp_path / "llama3.gguf", "f16")
    assert report["passed"] and report["architecture"] == "llama" and report["chat_family"] == "llama3"
    reader = gguf.GGUFReader(report["file"])
    freqs = {t.name: t for t in reader.tensors}["rope_freqs.weight"]
    assert freqs.tensor_type.name == "F32"
    expected = _llama3_factors(LLAMA3_ROPE, 16)
    assert len(set(expected)) > 2  # some frequencies kept, some divided by 8, some smoothed
    assert freqs.data.tolist() == pytest.approx(expected, rel=1e-5)
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe" and _field(reader, "tokenizer.ggml.add_bos_token")
    assert _field(reader, "llama.rope.freq_base") == 10000.0


def test_a_rope_type_gguf_cannot_carry_is_refused(tiny_path, tmp_path):
    model = tmp_path / "yarn"
    shutil.copytree(tiny_path, model)
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(LowtuneError, match="not 'yarn'"):
        export_gguf(model, tmp_path / "out.gguf")


def test_mistral_exports_as_llama(bpe_tokenizer, tmp_path):
    model = _tiny_model(tmp_path / "mistral", bpe_tokenizer("gpt-2"), "mistral", sliding_window=None)
    report = export_gguf(model, tmp_path / "mistral.gguf", "q8_0")
    assert report["passed"] and report["architecture"] == "llama"


@pytest.mark.parametrize("quant", ["bf16", "q5_1", "q5_0", "q4_1", "q4_0"])
def test_every_gguf_package_quant_type_round_trips(quant, tiny_path, tmp_path):
    import gguf

    report = export_gguf(tiny_path, tmp_path / f"tiny-{quant}.gguf", quant)
    assert report["passed"] and report["transformers"]["structure_kl"] <= STRUCTURE_KL
    assert QUANTS[quant].max_mean_kl is None or report["mean_kl"] <= QUANTS[quant].max_mean_kl
    reader = gguf.GGUFReader(report["file"])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == quant.upper()
    assert types["token_embd.weight"] == quant.upper() and types["blk.0.attn_norm.weight"] == "F32"
    assert _field(reader, "general.file_type") == getattr(gguf.LlamaFileType, QUANTS[quant].file_type)


def test_k_quants_without_llama_cpp_name_the_extra(tiny_path, tmp_path, monkeypatch):
    from lowtune.export import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(LowtuneError, match=r"q4_k_m quant type needs llama.cpp.*lowtune\[llamacpp\]"):
        export_gguf(tiny_path, tmp_path / "out.gguf", "q4_k_m")
    assert os.listdir(tmp_path) == []


def test_general_name_is_the_given_name_or_the_directory(tiny_path, tmp_path):
    import gguf

    named = export_gguf(tiny_path, tmp_path / "a.gguf", "f16", name="my-run", llama_cpp=False)
    assert _field(gguf.GGUFReader(named["file"]), "general.name") == "my-run"
    plain = export_gguf(tiny_path, tmp_path / "b.gguf", "f16", llama_cpp=False)
    assert _field(gguf.GGUFReader(plain["file"]), "general.name") == "tiny-random"
    assert plain["verified_with"] == ["transformers"] and "llama_cpp" not in plain


def test_a_run_exports_under_its_own_name_beside_the_run(tiny_path, tmp_path, random_adapter):
    import gguf

    from lowtune.export import export

    random_adapter(tiny_path, tmp_path / "my-run" / "adapter")
    report = export(tmp_path / "my-run", quant="q8_0")
    assert report["file"] == str(tmp_path / "my-run" / "my-run-q8_0.gguf") and report["passed"]
    assert gguf.GGUFReader(report["file"]).fields["general.name"].contents() == "my-run"
    assert sorted(os.listdir(tmp_path / "my-run")) == ["adapter", "my-run-q8_0.Modelfile", "my-run-q8_0.gguf"]


def test_without_llama_cpp_export_says_how_to_verify_in_it(tiny_path, tmp_path, monkeypatch):
    from lowtune.export import export, llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    said = []
    report = export(tiny_path, quant="f16", out=tmp_path / "t.gguf", say=said.append)
    assert report["verified_with"] == ["transformers"] and report["passed"]
    assert len(said) == 1 and "transformers' GGUF loader only" in said[0] and "lowtune[llamacpp]" in said[0]
