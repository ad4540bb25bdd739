"""GGUF export: round trips through transformers' GGUF loader, the Modelfile, and bad input."""

import json
import os
import shutil

import pytest
import torch

from lowtune import gguf as lowtune_gguf
from lowtune.errors import LowtuneError
from lowtune.gguf import TOLERANCES, export_gguf


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
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("qwen2") / "qwen2"
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
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
    assert report["mean_kl"] <= TOLERANCES[quant]["mean_kl"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]["max_abs_logit_diff"]
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


def test_a_wrong_export_fails_verification_and_leaves_nothing(tiny_path, tmp_path, monkeypatch):
    # Without llama's q/k permutation the reloaded model's logits move by ~3 (KL ~0.08) on tiny-random.
    monkeypatch.setattr(lowtune_gguf, "_permute_rotary", lambda weight, n_heads: weight)
    with pytest.raises(LowtuneError, match="verification failed"):
        export_gguf(tiny_path, tmp_path / "bad.gguf", "f16")
    assert os.listdir(tmp_path) == []


def test_a_tokenizer_mismatch_fails_verification(tiny_qwen2, tmp_path, monkeypatch):
    # Qwen2Tokenizer splits digits one by one; a GGUF claiming GPT-2 pre-tokenization would merge them.
    monkeypatch.setattr(lowtune_gguf, "_pre_tokenizer_name", lambda pre: "gpt2")
    with pytest.raises(LowtuneError, match="tokenizer match False"):
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
    with pytest.raises(LowtuneError, match="q4_k.*f16, q8_0"):
        export_gguf(tiny_path, tmp_path / "out.gguf", "q4_k")


@pytest.mark.skipif(
    not os.environ.get("LOWTUNE_TEST_SMOLLM2_GGUF"),
    reason="about 60 s (SmolLM2 conversion + export); set LOWTUNE_TEST_SMOLLM2_GGUF=1 to run",
)
def test_smollm2_f16_round_trip(tmp_path):
    from lowtune import builtin

    path = builtin.ensure("smollm2-135m-instruct")
    report = export_gguf(path, tmp_path / "smollm2-f16.gguf", "f16")
    _check_round_trip(report, path, "f16")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in open(report["modelfile"]).read()
