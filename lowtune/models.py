"""Load a base model and tokenizer, quantized or not, and attach or load LoRA adapters.

Policy: CUDA if available, else CPU (overridable). `quantization: auto` means NF4 on CUDA and
full precision on CPU: on CPU, memory is rarely the limit and bitsandbytes' 4-bit path is slower
(SmolLM2-135M SFT: 2.36 vs 1.83 s/step on 2 Xeon cores, see README); `nf4` forces QLoRA anywhere.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

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


def resolve_path(name: str, say=None, runs: bool = False) -> str:
    """A builtin name becomes its cached directory; local model directories and hub ids pass through.

    Each is checked before anything loads, and a mistake ends in one LowtuneError that says what was
    looked for, why it failed and what to do: a directory must hold a model (config.json), a hub id
    must be in the local cache or on the Hub (its config.json is fetched, as loading would fetch it).
    `runs`: the caller also took run and adapter directories (lowtune generate, eval, ...), and the
    message says so.
    """
    if name in builtin.BUILTINS:
        return str(builtin.ensure(name, say))
    path = Path(name)
    with contextlib.suppress(RuntimeError, ValueError):  # ~user of no such user, or not a user name
        path = path.expanduser()
    if _is(path.is_dir):
        if not _is((path / "config.json").is_file):
            raise LowtuneError(_not_a_model(path, runs))
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            config = _first_line(e)
        if not isinstance(config, dict):
            raise LowtuneError(
                f"{path / 'config.json'} is not a JSON object ({str(config)[:60]}), so {path} is no usable model "
                "directory; restore the file (save or download the model again)"
            )
        return str(path)
    if _is(path.exists):  # a file
        raise LowtuneError(
            f"{str(path)!r} is a file, not {_kinds(runs)}, a builtin or a Hugging Face id; give the directory "
            "that holds the model"
        )
    label, builtins = "run or model" if runs else "model", f"a builtin ({', '.join(builtin.BUILTINS)})"
    missing = f"{_kinds(runs)} (no such directory{_nearby(path)})"
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        close = difflib.get_close_matches(name, builtin.BUILTINS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise LowtuneError(
            f"{label} {name!r} is neither {builtins}, {missing}, nor a Hugging Face id like org/name; "
            f"{hint}check the spelling or path (`lowtune models` lists the builtins)"
        )
    if name not in _ON_HUB:
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(name, "config.json")
        except Exception as e:  # huggingface_hub's errors are OSErrors, its id checks ValueErrors; any is a no
            why, todo = _hub_problem(name, e)
            raise LowtuneError(
                f"{label} {name!r} is not {builtins} or {missing}, and as a Hugging Face id {why}; {todo}"
            ) from None
        _ON_HUB.add(name)
    return name


_ON_HUB: set[str] = set()  # hub ids whose config.json was found, in the cache or on the Hub


def _is(check) -> bool:
    """A filesystem check that treats an unusable path (too long, bad bytes) as absent."""
    try:
        return check()
    except (OSError, ValueError):
        return False


def _kinds(runs: bool) -> str:
    return "a run, adapter or model directory" if runs else "a model directory"


def _not_a_model(path: Path, runs: bool) -> str:
    if _is((path / "config.yaml").is_file) or _is((path / "checkpoints").is_dir):  # a lowtune run
        resume = f"; continue it with `lowtune train --resume {path}`" if _is((path / "checkpoints").is_dir) else ""
        if runs:
            return f"run {path} has no adapter (no adapter/adapter_config.json): it did not finish training{resume}"
        return (
            f"{path} is a lowtune run, not a model directory (no config.json); to build on a run, merge it "
            f"first (`lowtune merge {path} --out DIR`) and use DIR"
        )
    if runs:
        return (
            f"{path} is neither a run directory (no adapter/adapter_config.json), an adapter directory "
            "(no adapter_config.json) nor a model directory (no config.json); give a finished run (e.g. runs/sft), "
            "a Hugging Face model directory, a builtin or a hub id"
        )
    return (
        f"{path} is not a model directory (no config.json); give a Hugging Face model directory "
        "(config.json, tokenizer, *.safetensors), a builtin (`lowtune models`) or a hub id like org/name"
    )


def _nearby(path: Path) -> str:
    """' — did you mean runs/sft?' when a sibling of a missing path has a close name."""
    parent = path.parent
    if str(parent) in ("", ".") or not _is(parent.is_dir):
        return ""
    try:
        siblings = [p.name for p in parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f" — did you mean {parent / close[0]}?" if close else ""


def _hub_problem(name: str, e: BaseException) -> tuple[str, str]:
    """Why a Hugging Face download of `name` failed, and what to do: the one reading of huggingface_hub's
    errors (raised as they are, or wrapped in transformers' OSErrors) that every load path goes through."""
    from huggingface_hub import errors as hub
    from huggingface_hub import is_offline_mode

    def found(*kinds):  # the first exception of those kinds in the chain, or None
        return next((x for x in _chain(e) if isinstance(x, kinds)), None)

    login = "log in with `hf auth login` (or set HF_TOKEN)"
    if found(hub.GatedRepoError):
        return (
            "it is gated (access needs approval and a login)",
            f"ask for access at https://huggingface.co/{name}, then {login}",
        )
    if found(hub.DisabledRepoError):
        return "its author disabled it", "choose another model"
    if found(hub.RepositoryNotFoundError):
        return (
            "the Hub has no model by that name (or it is private)",
            f"check the spelling or path; for a private model {login}",
        )
    if found(hub.OfflineModeIsEnabled) or (found(hub.LocalEntryNotFoundError) and is_offline_mode()):
        return (
            "its files are not in the local cache (offline: HF_HUB_OFFLINE is set)",
            "check the spelling or path, or unset HF_HUB_OFFLINE where there is network access to download it",
        )
    if found(hub.LocalEntryNotFoundError):
        return (
            "its files are not in the local cache and the Hub could not be reached",
            "check the spelling or path, or the network connection (behind a proxy: set HTTPS_PROXY)",
        )
    if found(hub.EntryNotFoundError):
        return (
            "it has no config.json, so it is not a transformers model",
            "give a model repository (not an adapter or GGUF one)",
        )
    if invalid := found(hub.HFValidationError):
        return f"it is not valid ({_first_line(invalid)})", "check the spelling or path"
    if http := found(hub.HfHubHTTPError):
        return f"the Hub answered: {_first_line(http)}", "try again later, or check the name"
    return f"it failed: {_first_line(e)}", "check the spelling or path"


def _chain(e: BaseException | None) -> list[BaseException]:
    """The exception and those it was raised from or during (transformers wraps huggingface_hub's)."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def loading(name: str | Path, what: str = "model"):
    """Turn a failed transformers / PEFT load of `what` from `name` (a directory or hub id) into one
    LowtuneError: why it failed and what to do, never a library traceback."""
    try:
        yield
    except LowtuneError:
        raise
    except (OSError, ValueError, TypeError, KeyError, ImportError, SafetensorError) as e:  # what bad files raise
        from huggingface_hub import errors as hub
        from huggingface_hub import is_offline_mode

        name, local = str(name), _is(Path(name).is_dir)
        hub_kinds = (hub.HfHubHTTPError, hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)
        if not local and any(isinstance(x, hub_kinds) for x in _chain(e)):
            why, todo = _hub_problem(name, e)
            raise LowtuneError(f"could not load {name} ({what}) from the Hugging Face Hub: {why}; {todo}") from None
        if not local and is_offline_mode():
            todo = (
                "offline (HF_HUB_OFFLINE is set), only files in the local cache are used and some may be missing: "
                "unset HF_HUB_OFFLINE where there is network access to download them"
            )
        elif "trust_remote_code" in str(e):
            todo = "it ships its own code: set model.trust_remote_code=true if you trust its source"
        elif what == "adapter":
            todo = "check that it is a complete PEFT adapter (adapter_config.json, adapter_model.safetensors)"
        else:
            todo = "check that it is a complete Hugging Face model (config.json, tokenizer files, *.safetensors)"
        where = "in" if local else "of"
        raise LowtuneError(f"could not load the {what} {where} {name!r}: {_first_line(e)}; {todo}") from None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    with loading(path, "tokenizer"):
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
    # Under FSDP / ZeRO-3 accelerate shards and places the weights: no device_map.
    placement = {} if dist.sharded() else {"device_map": {"": device}}
    with loading(path):
        model = auto.from_pretrained(path, **placement, **kwargs)
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
    if not any(_is((p / "adapter_config.json").is_file) for p in (path / "adapter", path)):
        # Not a run or adapter: a builtin, model directory or hub id, checked with runs in the message.
        cfg = ModelConfig(name=resolve_path(model_or_run, say, runs=True), device=device)
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
        if _is((candidate / "adapter_config.json").is_file):
            return candidate
    if not _is(path.exists):
        raise LowtuneError(
            f"{str(path)!r} does not exist{_nearby(path)}; it is neither a run directory nor an adapter directory "
            "(e.g. runs/sft); check the path"
        )
    if _is((path / "checkpoints").is_dir):
        raise LowtuneError(
            f"{path} has no adapter (no adapter/adapter_config.json): the run did not finish training; "
            f"continue it with `lowtune train --resume {path}`"
        )
    raise LowtuneError(
        f"{path} has no adapter (no adapter/adapter_config.json or adapter_config.json); give a finished run "
        "directory (e.g. runs/sft) or its adapter directory"
    )


def adapter_config(adapter_dir: Path) -> dict:
    """The adapter's adapter_config.json; a damaged one is a LowtuneError."""
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LowtuneError(
            f"{path} cannot be read ({_first_line(e)}); the adapter is damaged, train it again"
        ) from None
    if not isinstance(config, dict):
        raise LowtuneError(f"{path} is not a JSON object; the adapter is damaged, train it again")
    return config


def adapter_task(adapter_dir: Path) -> str | None:
    """PEFT's task type of an adapter: CAUSAL_LM (a language model) or SEQ_CLS (a reward model)."""
    return adapter_config(adapter_dir).get("task_type")


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
    with loading(adapter_dir, "adapter"):
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), tokenizer, recipe


def require_safetensors(adapter_dir: Path) -> None:
    """Adapters load from safetensors only: a pickle file can run code when unpickled. A damaged file (its
    header unreadable) is a LowtuneError here, before any model loads."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise LowtuneError(f"{adapter_dir} has no adapter_model.safetensors; lowtune loads safetensors only")
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (OSError, SafetensorError) as e:
        raise LowtuneError(f"{weights} is damaged ({_first_line(e)}); train the adapter again") from None


def run_recipe(adapter_dir: Path) -> Recipe | None:
    config = adapter_dir.parent / "config.yaml"
    return load_recipe(config) if config.is_file() else None


def adapter_base(adapter_dir: Path) -> str:
    base = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise LowtuneError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    return base
