"""Load a base model and tokenizer, quantized or not, and attach or load LoRA adapters.

Where and in what precision is decided once per run by `lowtune.placement`; a model name (builtin, local
directory, hub id) is checked here before anything loads, and a failed load ends in one LowtuneError.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from pathlib import Path

from safetensors import SafetensorError

from lowtune import builtin, dist, runs
from lowtune.config import LoraConfig, ModelConfig
from lowtune.errors import LowtuneError
from lowtune.files import did_you_mean_path, probe
from lowtune.placement import Placement


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
    if probe(path.is_dir):
        if not probe((path / "config.json").is_file):
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
    if probe(path.exists):  # a file
        raise LowtuneError(
            f"{str(path)!r} is a file, not {_kinds(runs)}, a builtin or a Hugging Face id; give the directory "
            "that holds the model"
        )
    label, builtins = "run or model" if runs else "model", f"a builtin ({', '.join(builtin.BUILTINS)})"
    missing = f"{_kinds(runs)} (no such directory{did_you_mean_path(path)})"
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


def _kinds(runs: bool) -> str:
    return "a run, adapter or model directory" if runs else "a model directory"


def _not_a_model(path: Path, runs: bool) -> str:
    if probe((path / "config.yaml").is_file) or probe((path / "checkpoints").is_dir):  # a lowtune run
        resume = f"; continue it with `lowtune train --resume {path}`" if probe((path / "checkpoints").is_dir) else ""
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

        name, local = str(name), probe(Path(name).is_dir)
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


def load(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig | None = None,
    say=None,
    head: str = "lm",
    placement: Placement | None = None,
):
    """Load base + tokenizer per `model_cfg` where `placement` says (default: resolved from `model_cfg`), and
    wrap it with a fresh trainable LoRA adapter.

    Returns (model, tokenizer). With `lora_cfg=None` the base is returned without adapters; with
    `lora_cfg.start_from` (a run or adapter directory) that adapter is loaded, trainable, instead of a fresh one.
    `head="score"` loads the base as a sequence classifier with one output (a reward model): a new
    linear score head on the last token, trained in full and saved inside the adapter.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    placement = placement or Placement.resolve(model_cfg)
    dtype, quantization = placement.dtype, placement.quantization
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
    where = {} if dist.sharded() else {"device_map": {"": placement.device}}
    with loading(path):
        model = auto.from_pretrained(path, **where, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if lora_cfg is None:
        return model, tokenizer
    from peft import PeftModel, get_peft_model

    model = prepare_quantized(model, placement.gradient_checkpointing)
    if lora_cfg.start_from:  # trained further: the same adapter, its weights and its own LoRA settings
        adapter_dir = runs.find_adapter(lora_cfg.start_from)
        if runs.adapter_task(adapter_dir) == "SEQ_CLS":
            raise LowtuneError(f"lora.start_from: {adapter_dir} is a reward model; start from a causal-LM adapter")
        require_safetensors(adapter_dir)
        with loading(adapter_dir, "adapter"):
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), tokenizer
    model = get_peft_model(model, peft_config(lora_cfg, "SEQ_CLS" if head == "score" else "CAUSAL_LM"))
    return model, tokenizer


def prepare_quantized(model, gradient_checkpointing: bool):
    """Ready a 4-/8-bit base for adapter training; other models pass through.

    The base weights are frozen, 4-bit layers stay in bitsandbytes' trainable layout on CPU too (below), and with
    gradient checkpointing the embeddings' output requires grad so that checkpointed blocks still pass gradients
    back to the adapters. Unlike PEFT's `prepare_model_for_kbit_training`, the 16-bit weights (embeddings, LM head,
    norms) keep their dtype instead of going to fp32, which holds more memory from the start of training; the
    trainers compute in 16-bit anyway.
    """
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return model
    for param in model.parameters():
        param.requires_grad_(False)
    for module in model.modules():
        # bitsandbytes (0.50) repacks a 4-bit layer for its AVX512-BF16 CPU kernel the first time the layer runs in
        # eval mode without grad, and computes it with that kernel from then on; the kernel has no backward, so
        # training after an evaluation or a generation would pass no gradient through any 4-bit layer (bitsandbytes
        # warns "gemv_4bit: an autograd kernel was not registered"). A model that trains keeps the trainable layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if gradient_checkpointing:
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
    if not runs.is_run_or_adapter(model_or_run):
        # Not a run or adapter: a builtin, model directory or hub id, checked with runs in the message.
        cfg = ModelConfig(name=resolve_path(model_or_run, say, runs=True), device=device)
        model, tokenizer = load(cfg)
        return model.eval(), tokenizer, model_or_run
    adapter_dir = runs.find_adapter(model_or_run)
    model, tokenizer, _ = load_adapter(adapter_dir, device, say)
    return model, tokenizer, f"{runs.base_model(adapter_dir)} + {adapter_dir}"


def load_adapter(adapter_dir: Path, device: str = "auto", say=None, head: str = "lm"):
    """The run's base (per its recipe, on `device`) + the PEFT adapter, for inference: (model, tokenizer, recipe).

    `head="score"` takes a reward model's adapter, `head="lm"` any other; the wrong kind is refused.
    """
    from peft import PeftModel

    task = runs.adapter_task(adapter_dir)
    if head == "lm" and task == "SEQ_CLS":
        raise LowtuneError(f"{adapter_dir} is a reward model; it scores text (`lowtune score`), it does not generate")
    if head == "score" and task != "SEQ_CLS":
        raise LowtuneError(f"{adapter_dir} is not a reward model adapter (train one with `lowtune train reward`)")
    require_safetensors(adapter_dir)
    recipe = runs.read_recipe(adapter_dir)
    cfg = recipe.model if recipe else ModelConfig(name=runs.base_model(adapter_dir))
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


def _foldable_lora_layers(model) -> list:
    """The LoRA layers of `model` whose adapter folds exactly into a copy of the base weight (W + B A scale):
    plain LoRA on full-precision nn.Linear, one active adapter, switched on, no dropout in effect, not merged already.
    Empty when any LoRA layer is not such a one (quantized, DoRA, a LoRA bias, several adapters active, the adapter
    off): nothing is folded then."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return []
    if not isinstance(model, PeftModel):
        return []
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        adapters = layer.active_adapters
        if type(layer) is not Linear or len(adapters) != 1 or layer.merged or layer.lora_variant:
            return []
        if layer.disable_adapters:  # the adapter is off (a reference pass, or folded already): nothing to fold
            return []
        (name,) = adapters
        dropout = layer.lora_dropout[name]
        if name not in layer.lora_A or layer.lora_bias[name] or (dropout.training and getattr(dropout, "p", 0) > 0):
            return []
        if not layer.get_base_layer().weight.dtype.is_floating_point:
            return []
    return layers


@contextlib.contextmanager
def folded_lora(model, enabled: bool | None = None):
    """Generate with the LoRA adapter folded into the weights: the adapter's layers run as one matmul each instead
    of three, which makes CPU decoding faster (benchmarks/results/folded_generation.md). The folded weights are
    new tensors; the base's own are put back untouched afterwards, and the adapter is not changed.

    `enabled`: None folds on CPU only (a folded copy of the adapted weights lives while generating; on a GPU that
    memory and the speed are not measured yet), True wherever it can, False never. A model that cannot fold exactly
    (`_foldable_lora_layers`) generates as it is."""
    import torch

    layers = _foldable_lora_layers(model) if enabled is not False else []
    if enabled is None and layers and layers[0].get_base_layer().weight.device.type != "cpu":
        layers = []
    if not layers:
        yield model
        return
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                (name,) = layer.active_adapters
                originals.append((base, base.weight.data))
                base.weight.data = base.weight.data + layer.get_delta_weight(name).to(base.weight.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for base, weight in originals:
            base.weight.data = weight
