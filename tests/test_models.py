import pytest
import torch

from lowtune import models, placement, runs
from lowtune.config import LoraConfig, ModelConfig
from lowtune.errors import LowtuneError


def test_tiny_random_is_a_plain_hf_directory(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    assert model.config.model_type == "llama"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.pad_token != tokenizer.eos_token == "<|im_end|>"


def test_tiny_random_is_deterministic(tiny_path, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lowtune import builtin

    monkeypatch.setenv("LOWTUNE_CACHE", str(tmp_path))
    again = builtin.ensure("tiny-random")
    a, b = load_file(tiny_path / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_settings_reach_peft():
    cfg = LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"], use_rslora=True)
    model, _ = models.load(ModelConfig(name="tiny-random"), cfg)
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.r == 4 and peft_cfg.lora_alpha == 8 and peft_cfg.use_rslora
    assert set(peft_cfg.target_modules) == {"q_proj", "v_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and not any("k_proj" in n for n in trainable)


def test_dora_and_all_linear():
    model, _ = models.load(ModelConfig(name="tiny-random"), LoraConfig(r=2, use_dora=True))
    names = {n for n, _ in model.named_parameters()}
    assert any("lora_magnitude_vector" in n for n in names)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{proj}.lora_A" in n for n in names)


def test_nf4_loads_and_trains_a_step_on_cpu():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    model, tokenizer = models.load(ModelConfig(name="tiny-random", quantization="nf4"), LoraConfig(r=4))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    batch = tokenizer(["What is 12 + 34? 46"], return_tensors="pt")
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    before = [p.detach().clone() for p in lora]
    opt = torch.optim.AdamW(lora, lr=1e-2)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, lora, strict=True))


def test_nf4_trains_the_same_after_an_evaluation_on_cpu():
    """bitsandbytes repacks a 4-bit layer for a CPU inference kernel without a backward the first time the layer runs
    in eval mode; lowtune's training model keeps the trainable layout, so an evaluation before training (eval.before)
    or PPO's eval-mode rollouts leave the adapter's gradients as they were."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    if not bnbf.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks 4-bit layers here")
    model, tokenizer = models.load(ModelConfig(name="tiny-random", quantization="nf4"), LoraConfig(r=4, dropout=0.0))
    batch = tokenizer(["What is 12 + 34? 46", "What is 7 + 8? 15"], return_tensors="pt", padding=True)

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(**batch)
    after = gradients()
    assert before.keys() == after.keys() and len(before) > 1
    assert all(torch.allclose(before[n], after[n]) for n in before)


def test_nf4_preparation_freezes_the_base_keeps_16_bit_weights_and_checkpoints():
    """No fp32 upcast of embeddings/norms (PEFT's k-bit preparation does one: 0.43 GiB at 1.5B), only
    LoRA trains, and gradients still reach the adapters through checkpointed blocks."""
    pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(name="tiny-random", quantization="nf4", dtype="bfloat16", gradient_checkpointing=True)
    model, tokenizer = models.load(cfg, LoraConfig(r=4))
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for n, p in base.named_parameters() if "norm" in n)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    assert base.is_gradient_checkpointing
    model.train()
    batch = tokenizer(["What is 12 + 34? 46"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_gradient_checkpointing_auto_is_on_with_cuda_only():
    auto = ModelConfig()
    assert auto.gradient_checkpointing == "auto"
    assert placement.resolve_gradient_checkpointing(auto, torch.device("cuda")) is True
    assert placement.resolve_gradient_checkpointing(auto, torch.device("cpu")) is False
    for value in (True, False):
        for device in ("cpu", "cuda"):
            assert (
                placement.resolve_gradient_checkpointing(
                    ModelConfig(gradient_checkpointing=value), torch.device(device)
                )
                is value
            )


def test_auto_policy_on_cpu():
    cfg = ModelConfig()
    device = placement.resolve_device(cfg)
    if device.type == "cpu":
        assert placement.resolve_quantization(cfg, device) == "none"
        assert placement.resolve_dtype(cfg, device) == torch.float32
    assert placement.resolve_quantization(ModelConfig(quantization="nf4"), device) == "nf4"


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(LowtuneError, match="no CUDA device"):
        placement.resolve_device(ModelConfig(device="cuda"))


@pytest.mark.parametrize(
    "name, message", [("./no/such/dir", "neither a builtin"), ("not a model", "neither a builtin")]
)
def test_bad_model_names(name, message):
    with pytest.raises(LowtuneError, match=message):
        models.resolve_path(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(LowtuneError, match="no config.json"):
        models.resolve_path(str(tmp_path))


# ---------------------------------------------------------------- library noise on the console

LOAD_TINY = (
    "from lowtune import models; from lowtune.config import LoraConfig, ModelConfig; "
    "models.load(ModelConfig(name='tiny-random'), LoraConfig())"
)


def _run_python(code: str, **env) -> str:
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "LOWTUNE_DEBUG"} | env
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_bitsandbytes_kernels_warning_shows_only_for_debug_output(tiny_path):
    """bitsandbytes' 'Failed to load CPU gemm_4bit_forward from kernels-community' (harmless: its own CPU path
    runs) stays off the console when lowtune loads a model, and shows with LOWTUNE_DEBUG=1."""
    from lowtune.logs import BNB_KERNELS_MESSAGE

    if BNB_KERNELS_MESSAGE not in _run_python(LOAD_TINY, LOWTUNE_DEBUG="1"):
        if BNB_KERNELS_MESSAGE in _run_python("import bitsandbytes"):
            pytest.fail("LOWTUNE_DEBUG=1 hid the bitsandbytes message")
        pytest.skip("bitsandbytes does not print it here (a CPU without AVX512-BF16, or `kernels` installed)")
    assert BNB_KERNELS_MESSAGE not in _run_python(LOAD_TINY)


def test_bitsandbytes_kernels_filter(monkeypatch):
    import logging

    from lowtune.logs import BNB_CPU_LOGGER, BNB_KERNELS_MESSAGE, HideMessage

    logger = logging.getLogger(BNB_CPU_LOGGER)
    assert any(isinstance(f, HideMessage) for f in logger.filters)  # installed by `import lowtune`

    def record(msg):
        return logging.LogRecord(
            BNB_CPU_LOGGER, logging.WARNING, "ops.py", 1, msg, ("No module named 'kernels'",), None
        )

    message = BNB_KERNELS_MESSAGE + ": %s. Please make sure you already `pip install kernels`"
    monkeypatch.delenv("LOWTUNE_DEBUG", raising=False)
    assert not logger.filter(record(message))
    assert logger.filter(record("Some other bitsandbytes warning: %s"))  # only that message is hidden
    for value, shown in [("1", True), ("0", False), ("", False)]:
        monkeypatch.setenv("LOWTUNE_DEBUG", value)
        assert bool(logger.filter(record(message))) is shown, value
    monkeypatch.delenv("LOWTUNE_DEBUG")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # Python logging set up for debug output shows it too
    try:
        assert logger.filter(record(message))
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- a model that cannot be loaded: one LowtuneError


def _hub_error(kind: str, message: str = "404 Client Error. (Request ID: x)\nRepository Not Found for url: ..."):
    from types import SimpleNamespace

    from huggingface_hub import errors

    cls = getattr(errors, kind)
    if issubclass(cls, errors.HfHubHTTPError):
        return cls(message, response=SimpleNamespace(headers={}, request=None))
    return cls(message)


@pytest.mark.parametrize(
    "kind, offline, says",
    [
        ("GatedRepoError", False, ["is gated", "https://huggingface.co/org/name", "hf auth login"]),
        ("RepositoryNotFoundError", False, ["no model by that name", "check the spelling", "hf auth login"]),
        ("LocalEntryNotFoundError", True, ["not in the local cache", "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"]),
        ("LocalEntryNotFoundError", False, ["not in the local cache", "could not be reached", "network"]),
        ("RemoteEntryNotFoundError", False, ["no config.json", "not a transformers model"]),
        ("HfHubHTTPError", False, ["the Hub answered: 404 Client Error", "try again later"]),
    ],
)
def test_hub_errors_become_one_line_saying_why_and_what_to_do(monkeypatch, tmp_path, kind, offline, says):
    """The one mapping of huggingface_hub's errors: raised as they are (the check in resolve_path) or wrapped in
    transformers' OSError (a load), each ends in a one-line LowtuneError."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    error = _hub_error(kind)

    def download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(LowtuneError) as looked_up:
        models.resolve_path("org/name")
    assert "'org/name' is not a builtin" in str(looked_up.value) and "as a Hugging Face id" in str(looked_up.value)
    with pytest.raises(LowtuneError) as loaded:
        with models.loading("org/name", "tokenizer"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nCheck ...") from error
    assert "could not load org/name (tokenizer) from the Hugging Face Hub" in str(loaded.value)
    for message in (str(looked_up.value), str(loaded.value)):
        assert "\n" not in message
        for part in says:
            assert part in message, (part, message)


def test_a_hub_id_offline_and_not_cached(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    with pytest.raises(LowtuneError) as e:
        models.resolve_path("runs/sfy", runs=True)  # the real huggingface_hub, offline (conftest)
    message = str(e.value)
    assert "run or model 'runs/sfy' is not a builtin" in message and "run, adapter or model directory" in message
    assert "did you mean runs/sft?" in message and "HF_HUB_OFFLINE is set" in message
    with pytest.raises(LowtuneError, match="is not valid"):
        models.resolve_path("org/na me")


def test_damaged_model_and_adapter_files(tmp_path, tiny_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("not json")
    with pytest.raises(LowtuneError, match="config.json is not a JSON object"):
        models.resolve_path(str(model))
    (model / "config.json").write_text((tiny_path / "config.json").read_text())
    with pytest.raises(LowtuneError, match="could not load the tokenizer in .*; check that it is a complete"):
        models.load(ModelConfig(name=str(model)))

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("not json")
    with pytest.raises(LowtuneError, match="adapter_config.json cannot be read"):
        runs.adapter_task(adapter)
    (adapter / "adapter_config.json").write_text("[]")
    with pytest.raises(LowtuneError, match="adapter_config.json is not a JSON object"):
        runs.base_model(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LowtuneError, match="adapter_model.safetensors is damaged"):
        models.require_safetensors(adapter)
