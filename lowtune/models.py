"""Load a base model and tokenizer, quantized or not, and attach or load LoRA adapters.

Policy: CUDA if available, else CPU (overridable). `quantization: auto` means NF4 on CUDA and
full precision on CPU: on CPU, memory is rarely the limit and bitsandbytes' 4-bit path is slower
(SmolLM2-135M SFT: 2.36 vs 1.83 s/step on 2 Xeon cores, see README); `nf4` forces QLoRA anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lowtune import builtin, dist
from lowtune.config import LoraConfig, ModelConfig, Recipe, load_recipe
from lowtune.errors import LowtuneError


def resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LowtuneError("model.device is cuda but no CUDA device is visible; use model.device=auto")
    if cfg.device == "auto":
        cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
        return torch.device("cuda", dist.local_rank()) if cuda else torch.device("cpu")
    # Several processes on one machine: each its own GPU (LOCAL_RANK, set by accelerate launch / torchrun).
    return torch.device("cuda", dist.local_rank()) if cfg.device == "cuda" else torch.device(cfg.device)


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_quantization(cfg: ModelConfig, device: torch.device) -> str:
    if cfg.quantization == "auto":
        return "nf4" if device.type == "cuda" else "none"
    return cfg.quantization


def resolve_path(name: str, say=None) -> str:
    """A builtin name becomes its cached directory; local paths and hub ids pass through."""
    if name in builtin.BUILTINS:
        return str(builtin.ensure(name, say))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LowtuneError(f"{path} is not a model directory (no config.json)")
        return str(path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise LowtuneError(
            f"model {name!r} is neither a builtin ({', '.join(builtin.BUILTINS)}), "
            "a local directory, nor a Hugging Face id like org/name"
        )
    return name


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # Padding with EOS would mask the real EOS out of the loss, and the model never learns
        # to stop. Use another existing special token when the vocabulary has one.
        for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", tokenizer.unk_token):
            if candidate and candidate != tokenizer.eos_token and candidate in tokenizer.get_vocab():
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# End-of-turn markers of common chat templates (ChatML, Llama 3, Gemma, Phi-3), in that order.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def end_of_turn_token(tokenizer) -> str:
    """The token that ends an assistant turn in the chat template (falls back to EOS)."""
    template = tokenizer.chat_template or ""
    for token in END_OF_TURN:
        if token in template and token in tokenizer.get_vocab():
            return token
    return tokenizer.eos_token


def load(model_cfg: ModelConfig, lora_cfg: LoraConfig | None = None, say=None, head: str = "lm"):
    """Load base + tokenizer per `model_cfg`, and wrap it with a fresh trainable LoRA adapter.

    Returns (model, tokenizer). With `lora_cfg=None` the base is returned without adapters.
    `head="score"` loads the base as a sequence classifier with one output (a reward model): a new
    linear score head on the last token, trained in full and saved inside the adapter.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    device = resolve_device(model_cfg)
    dtype = resolve_dtype(model_cfg, device)
    quantization = resolve_quantization(model_cfg, device)
    path = resolve_path(model_cfg.name, say)
    if model_cfg.trust_remote_code and say:
        say(f"trust_remote_code is on: code shipped with {model_cfg.name} will run")
    tokenizer = load_tokenizer(path, model_cfg.trust_remote_code)

    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if quantization == "nf4":
        # QLoRA (Dettmers et al. 2023): NF4 storage, double quantization of the scales, 16-bit compute.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    elif quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if head == "score":
        kwargs["num_labels"] = 1
    auto = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    try:
        # Under FSDP / ZeRO-3 accelerate shards and places the weights: no device_map.
        placement = {} if dist.sharded() else {"device_map": {"": device}}
        model = auto.from_pretrained(path, **placement, **kwargs)
    except OSError as e:
        raise LowtuneError(f"could not load model {model_cfg.name!r}: {str(e).splitlines()[0]}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if lora_cfg is None:
        return model, tokenizer
    from peft import get_peft_model

    model = prepare_quantized(model, model_cfg)
    model = get_peft_model(model, peft_config(lora_cfg, "SEQ_CLS" if head == "score" else "CAUSAL_LM"))
    return model, tokenizer


def resolve_gradient_checkpointing(cfg: ModelConfig, device: torch.device) -> bool:
    if cfg.gradient_checkpointing == "auto":
        return device.type == "cuda"
    return bool(cfg.gradient_checkpointing)


def prepare_quantized(model, model_cfg: ModelConfig):
    """Ready a 4-/8-bit base for adapter training; other models pass through.

    The base weights are frozen and, with gradient checkpointing, the embeddings' output requires grad
    so that checkpointed blocks still pass gradients back to the adapters. Unlike PEFT's
    `prepare_model_for_kbit_training`, the 16-bit weights (embeddings, LM head, norms) keep their
    dtype instead of going to fp32: at the Qwen2.5-1.5B shape that upcast alone held 0.43 GiB more
    from the start of training (H200 measurement, README), and the trainers compute in 16-bit anyway.
    """
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return model
    for param in model.parameters():
        param.requires_grad_(False)
    if resolve_gradient_checkpointing(model_cfg, model.device):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def peft_config(lora_cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    """PEFT's LoraConfig. For SEQ_CLS, PEFT trains and saves the `score` head in full (modules_to_save)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        use_dora=lora_cfg.use_dora,
        use_rslora=lora_cfg.use_rslora,
        task_type=task_type,
    )


def load_for_inference(model_or_run: str, device: str = "auto", say=None):
    """Load a run directory, a PEFT adapter directory, a builtin name, a local model or hub id.

    Returns (model, tokenizer, description). A run or adapter gives base + adapter (not merged);
    the base is loaded in full precision on CPU and per the run's recipe on CUDA.
    """
    path = Path(model_or_run)
    if not any((p / "adapter_config.json").is_file() for p in (path / "adapter", path)):
        cfg = ModelConfig(name=model_or_run, device=device)
        model, tokenizer = load(cfg)
        return model.eval(), tokenizer, model_or_run
    adapter_dir = find_adapter(path)
    model, tokenizer, recipe = load_adapter(adapter_dir, device, say)
    base_name = recipe.model.name if recipe else adapter_base(adapter_dir)
    return model, tokenizer, f"{base_name} + {adapter_dir}"


def find_adapter(run_or_adapter: str | Path) -> Path:
    """The PEFT adapter directory of a run directory (or the adapter directory itself)."""
    path = Path(run_or_adapter)
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    if not path.exists():
        raise LowtuneError(
            f"{path} does not exist; it is neither a run directory nor an adapter directory (e.g. runs/sft)"
        )
    raise LowtuneError(f"{path} has no adapter (no adapter/adapter_config.json); did the run finish training?")


def adapter_task(adapter_dir: Path) -> str | None:
    """PEFT's task type of an adapter: CAUSAL_LM (a language model) or SEQ_CLS (a reward model)."""
    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("task_type")


def load_adapter(adapter_dir: Path, device: str = "auto", say=None, head: str = "lm"):
    """The run's base (per its recipe, on `device`) + the PEFT adapter, for inference: (model, tokenizer, recipe).

    `head="score"` takes a reward model's adapter, `head="lm"` any other; the wrong kind is refused.
    """
    from peft import PeftModel

    task = adapter_task(adapter_dir)
    if head == "lm" and task == "SEQ_CLS":
        raise LowtuneError(f"{adapter_dir} is a reward model; it scores text (`lowtune score`), it does not generate")
    if head == "score" and task != "SEQ_CLS":
        raise LowtuneError(f"{adapter_dir} is not a reward model adapter (train one with `lowtune train reward`)")
    require_safetensors(adapter_dir)
    recipe = run_recipe(adapter_dir)
    cfg = recipe.model if recipe else ModelConfig(name=adapter_base(adapter_dir))
    cfg.device = device
    model, tokenizer = load(cfg, say=say, head=head)
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(adapter_dir), cfg.trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), tokenizer, recipe


def require_safetensors(adapter_dir: Path) -> None:
    """Adapters load from safetensors only: a pickle file can run code when unpickled."""
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise LowtuneError(f"{adapter_dir} has no adapter_model.safetensors; lowtune loads safetensors only")


def run_recipe(adapter_dir: Path) -> Recipe | None:
    config = adapter_dir.parent / "config.yaml"
    return load_recipe(config) if config.is_file() else None


def adapter_base(adapter_dir: Path) -> str:
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise LowtuneError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    return base
