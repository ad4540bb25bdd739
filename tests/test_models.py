import pytest
import torch

from lowtune import models
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
    assert models.resolve_gradient_checkpointing(auto, torch.device("cuda")) is True
    assert models.resolve_gradient_checkpointing(auto, torch.device("cpu")) is False
    for value in (True, False):
        for device in ("cpu", "cuda"):
            assert (
                models.resolve_gradient_checkpointing(ModelConfig(gradient_checkpointing=value), torch.device(device))
                is value
            )


def test_auto_policy_on_cpu():
    cfg = ModelConfig()
    device = models.resolve_device(cfg)
    if device.type == "cpu":
        assert models.resolve_quantization(cfg, device) == "none"
        assert models.resolve_dtype(cfg, device) == torch.float32
    assert models.resolve_quantization(ModelConfig(quantization="nf4"), device) == "nf4"


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(LowtuneError, match="no CUDA device"):
        models.resolve_device(ModelConfig(device="cuda"))


@pytest.mark.parametrize(
    "name, message", [("./no/such/dir", "neither a builtin"), ("not a model", "neither a builtin")]
)
def test_bad_model_names(name, message):
    with pytest.raises(LowtuneError, match=message):
        models.resolve_path(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(LowtuneError, match="no config.json"):
        models.resolve_path(str(tmp_path))
