"""Recipe schema: typed dataclasses, YAML loading, `a.b=c` overrides, validation.

A recipe is one YAML file with the sections `method`, `model`, `lora`, `data`, `train`, `rewards`,
`eval`, `augment`, `budget` and `output`. Every field below is documented where it is declared
(`lowtune recipes --explain` prints them). The `train` section is passed through to TRL's config class for the method
(e.g. `trl.SFTConfig`), so every TRL/transformers training argument works there and is checked
against that class.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowtune.errors import LowtuneError, did_you_mean

# method -> the TRL config class its `train` section is checked against and passed to.
TRAIN_CONFIG_CLASSES = {
    "sft": "trl.SFTConfig",
    "grpo": "trl.GRPOConfig",
    "reward": "trl.RewardConfig",
    "dpo": "trl.DPOConfig",
    "ppo": "lowtune.rl.ppo.PPOConfig",  # TRL 1.16 has no PPO: lowtune's own, a transformers TrainingArguments
}

# The default system prompt of reasoning recipes (GRPO), in the DeepSeek-R1 format.
REASONING_PROMPT = (
    "Think about the problem step by step inside <think> </think> tags, then give only the final "
    "answer inside <answer> </answer> tags."
)


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass
class ModelConfig:
    name: str = _doc(
        "builtin model name (`lowtune models`), Hugging Face model id, or local directory",
        default="smollm2-135m-instruct",
    )
    quantization: str = _doc(
        "auto (nf4 on CUDA, none on CPU), nf4 (QLoRA 4-bit), int8, or none (full precision)",
        default="auto",
    )
    dtype: str = _doc(
        "auto (bfloat16 on CUDA with bf16 support, else float16 on CUDA, float32 on CPU), float32, bfloat16 or float16",
        default="auto",
    )
    device: str = _doc("auto (CUDA if available, else CPU), cpu, or cuda", default="auto")
    gradient_checkpointing: bool | str = _doc(
        "recompute activations in backward: far less memory, about 25% slower. auto: on with CUDA (where "
        "memory is the limit: GRPO at the Qwen2.5-1.5B shape peaks at 2.2 GiB with it, as plain TRL does; "
        "it peaked at 20.7 GiB without it and with an fp32 upcast since removed, see README), off on CPU",
        default="auto",
    )
    logprob_kernel: str = _doc(
        "per-token log-probs inside TRL's GRPO trainer: auto (lowtune's token_logprobs on CPU, where its "
        "forward + backward took 1.48 s against 7.47 s for TRL's chunked path at the SmolLM2-135M shape and "
        "1.82 s against 5.57 s at Qwen2.5-0.5B's, benchmarks/results/logprobs.md on a 2-core Xeon; TRL's own "
        "on CUDA, where the two have not been measured), lowtune (its PyTorch path on any device), or trl",
        default="auto",
    )
    trust_remote_code: bool = _doc(
        "allow models that ship their own Python code (off unless you trust the source)",
        default=False,
    )


@dataclass
class LoraConfig:
    r: int = _doc("LoRA rank", default=16)
    alpha: float = _doc("LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)", default=32)
    dropout: float = _doc("dropout on the LoRA input (off in PPO, whose ratio needs one policy)", default=0.0)
    target_modules: list[str] | str = _doc(
        "modules that get adapters: `all-linear` or a list of module names", default="all-linear"
    )
    use_dora: bool = _doc("weight-decomposed LoRA (DoRA, Liu et al. 2024)", default=False)
    use_rslora: bool = _doc("rank-stabilized scaling alpha / sqrt(r) (Kalajdzievski 2023)", default=False)


@dataclass
class DataConfig:
    source: str = _doc(
        "builtin task (`arithmetic`; `arithmetic-text`: short stories with 3-digit arithmetic, each the reply "
        "to the word problem it answers, for Toolformer), local file (.jsonl/.json/.csv/.parquet) or directory, "
        "or Hugging Face dataset name",
        default="arithmetic",
    )
    format: str = _doc(
        "auto (detect from columns), messages, prompt_completion, text, prompt_answer, gsm8k "
        "(question + answer ending in `#### n`); for reward/dpo: preference (prompt, chosen, rejected), "
        "preference_implicit (chosen, rejected sharing a prompt) or hh_rlhf (Human:/Assistant: transcripts)",
        default="auto",
    )
    system_prompt: str | None = _doc(
        "system message prepended to each prompt: `auto` (the think/answer reasoning prompt for "
        "GRPO, none for SFT), null for none, or your own text",
        default="auto",
    )
    subset: str | None = _doc("dataset configuration name for hub datasets", default=None)
    data_dir: str | None = _doc("folder inside a hub dataset (HH-RLHF: harmless-base, helpful-base, ...)", default=None)
    split: str = _doc("split to train on (hub datasets and directories)", default="train")
    max_rows: int | None = _doc("use at most this many rows (after shuffling with seed)", default=None)
    heldout: int | float | None = _doc(
        "reward/dpo: rows held out from the END of a data file for pairwise accuracy, never trained on "
        "(a count, or a fraction below 1); default 10% up to 500. The arithmetic task uses its held-out problems",
        default=None,
    )
    bad_rows: str = _doc(
        "error (stop and list every bad row) or skip (drop them, list them, and count them in summary.json)",
        default="error",
    )
    seed: int = _doc("seed for the builtin task and row shuffling", default=0)
    n_train: int = _doc("arithmetic, arithmetic-text: number of training problems", default=2000)
    digits: int = _doc("arithmetic, arithmetic-text: digits per operand", default=2)
    operations: list[str] = _doc("arithmetic: operations to draw from (+, -, *)", default_factory=lambda: ["+"])
    operands: int = _doc("arithmetic: operands per problem, 2 to 4", default=2)


@dataclass
class RewardsConfig:
    accuracy: float = _doc("weight of accuracy_reward (extracted answer equals the reference)", default=1.0)
    format: float = _doc("weight of format_reward (<think>…</think><answer>…</answer>)", default=0.0)
    length: float = _doc("weight of length_reward (cosine length-scaled correctness, Yeo et al. 2025)", default=0.0)
    length_max: int | None = _doc("length_reward's max length in tokens (default: max_completion_length)", default=None)
    model: str | None = _doc(
        "PPO: a reward run or its adapter directory (`lowtune train reward`) on the same base model; "
        "a response's score is this model's score plus the weighted rule rewards above",
        default=None,
    )


@dataclass
class EvalConfig:
    task: str | None = _doc(
        "held-out task scored before and after training: `arithmetic` (the builtin task's problems), "
        "`word_problems` (held-out questions like arithmetic-text's, answer = last number), or null to skip",
        default="arithmetic",
    )
    n: int = _doc("number of held-out problems", default=100)
    digits: int | None = _doc("digits per operand (default: data.digits)", default=None)
    operations: list[str] | None = _doc("operations (default: data.operations)", default=None)
    operands: int | None = _doc("operands per problem (default: data.operands)", default=None)
    max_new_tokens: int = _doc("generation budget per answer (the base model reasons at length)", default=128)
    batch_size: int = _doc("problems generated at once", default=50)
    tools: list[str] = _doc(
        "tools the model may call while answering (tool-augmented generation, one problem at a time): "
        "builtin names (calculator, calendar, search) or module:attr",
        default_factory=list,
    )
    before: bool = _doc("also score the base model before training (off saves a minute when it is known)", default=True)
    every_minutes: float | None = _doc(
        "also score the held-out task every this many minutes of training (an accuracy-vs-time curve in "
        "metrics.jsonl and summary.json); evaluation time is not counted as training time",
        default=None,
    )


@dataclass
class AugmentConfig:
    tools: list[str] = _doc(
        "SFT only: Toolformer augmentation first (Schick et al. 2023). The base model annotates each training "
        "reply (or text) with calls to these tools (calculator, calendar, search, or module:attr), keeps the "
        "calls that make the following text easier to predict, and SFT trains on the annotated rows; written "
        "to the run's augmented.jsonl. Empty: plain SFT",
        default_factory=list,
    )
    top_k: int | None = _doc("positions per text (default: the paper's, calculator 20, others 5)", default=None)
    samples: int | None = _doc("calls sampled per position (default: calculator 10, others 5)", default=None)
    tau_s: float | None = _doc("sampling threshold on p('[') (default: calculator 0, others 0.05)", default=None)
    tau_f: float | None = _doc("filtering threshold L- - L+ (default: calculator 0.5, others 1.0)", default=None)
    only_with_calls: bool = _doc(
        "train only on the rows that got a kept call (default: every row, those without a call as they were)",
        default=False,
    )
    batch_size: int = _doc("sequences per forward pass or sampling batch", default=32)


@dataclass
class BudgetConfig:
    minutes: float | None = _doc(
        "stop training after this many minutes of training time (periodic evaluations excluded) and save "
        "the adapter as at the end of train.max_steps, which still caps the run; counted per invocation",
        default=None,
    )


@dataclass
class OutputConfig:
    dir: str = _doc("parent directory of run directories", default="runs")
    name: str | None = _doc(
        "run directory name (default: the method); an existing one gets a -2, -3... suffix",
        default=None,
    )
    quiet: bool = _doc("no progress bar (for CI logs)", default=False)


@dataclass
class Recipe:
    method: str = _doc("training method: " + ", ".join(TRAIN_CONFIG_CLASSES), default="sft")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: dict[str, Any] = _doc("fields of TRL's config class for the method, passed through", default_factory=dict)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def system_prompt(self) -> str | None:
        """The system message for prompts, with `auto` resolved per method."""
        if self.data.system_prompt == "auto":
            return REASONING_PROMPT if self.method == "grpo" else None
        return self.data.system_prompt


SECTIONS = typing.get_type_hints(Recipe)


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe YAML (or the defaults when `path` is None) and apply `a.b=c` overrides."""
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    where = "recipe"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LowtuneError(f"recipe {path} not found; `lowtune recipes` lists the shipped ones")
        where = str(path)
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise LowtuneError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise LowtuneError(f"{path}: a recipe is a mapping of sections (method, model, ...)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LowtuneError(f"override {item!r}: write it as section.field=value, e.g. train.max_steps=50")
        target = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise LowtuneError(f"override {item!r}: {part} is not a section")
        target[parts[-1]] = _override_value(value)
        lines[key.strip()] = -1
        for i in range(1, len(parts)):  # a new section named by an override
            lines.setdefault(".".join(parts[:i]), -1)
    return _build(raw, where, lines)


def _override_value(text: str) -> Any:
    """An override's value as YAML would read it (3, true, [a, b], null); text YAML cannot parse stays text."""
    if not text.strip():
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML text, for error messages."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    return out


def _build(raw: dict[str, Any], where: str, lines: dict[str, int]) -> Recipe:
    def at(key: str) -> str:
        line = lines.get(key)
        if line == -1:
            return "override"
        return f"{where}:{line}" if line else where

    for key in raw:
        if key not in SECTIONS:
            raise LowtuneError(f"{at(key)}: unknown section {key}{did_you_mean(str(key), SECTIONS)}")
    kwargs: dict[str, Any] = {}
    for name, tp in SECTIONS.items():
        if name not in raw:
            continue
        value = raw[name]
        if name == "method":
            kwargs[name] = _coerce(value, str, name, at(name))
        elif name == "train":
            if not isinstance(value, dict):
                raise LowtuneError(f"{at(name)}: train must be a mapping of TRL config fields")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _build_section(tp, value, name, at)
    recipe = Recipe(**kwargs)
    if recipe.method not in TRAIN_CONFIG_CLASSES:
        raise LowtuneError(
            f"{at('method')}: unknown method {recipe.method}{did_you_mean(recipe.method, TRAIN_CONFIG_CLASSES)}"
        )
    recipe.train = _check_train(recipe.method, recipe.train, at)
    _check_choices(recipe, at)
    return recipe


def _build_section(cls: type, value: Any, name: str, at) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise LowtuneError(f"{at(name)}: {name} must be a mapping of fields")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, v in value.items():
        dotted = f"{name}.{key}"
        if key not in hints:
            raise LowtuneError(f"{at(dotted)}: unknown key {dotted}{did_you_mean(str(key), hints)}")
        out[key] = _coerce(v, hints[key], dotted, at(dotted))
    return cls(**out)


def _check_train(method: str, train: dict[str, Any], at) -> dict[str, Any]:
    """Check `train` keys and values against TRL's config class for the method."""
    cls = train_config_class(method)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {}
    for key, value in train.items():
        dotted = f"train.{key}"
        if key not in fields:
            raise LowtuneError(f"{at(dotted)}: unknown key {dotted}{did_you_mean(str(key), fields)}")
        out[key] = _coerce(value, hints.get(key, Any), dotted, at(dotted))
    return out


def train_config_class(method: str) -> type:
    module, _, name = TRAIN_CONFIG_CLASSES[method].rpartition(".")
    return getattr(importlib.import_module(module), name)


CHOICES = {
    "model.quantization": ("auto", "nf4", "int8", "none"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.device": ("auto", "cpu", "cuda"),
    "model.logprob_kernel": ("auto", "lowtune", "trl"),
    "data.format": (
        "auto",
        "messages",
        "prompt_completion",
        "text",
        "prompt_answer",
        "gsm8k",
        "preference",
        "preference_implicit",
        "hh_rlhf",
    ),
    "data.bad_rows": ("error", "skip"),
}


def _check_choices(recipe: Recipe, at) -> None:
    if recipe.model.gradient_checkpointing not in (True, False, "auto"):
        raise LowtuneError(
            f"{at('model.gradient_checkpointing')}: model.gradient_checkpointing is "
            f"{recipe.model.gradient_checkpointing!r}; choose auto, true or false"
        )
    for dotted, valid in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(recipe, section), key)
        if value not in valid:
            raise LowtuneError(f"{at(dotted)}: {dotted} is {value!r}; choose one of {', '.join(valid)}")
    positive = {"lora.r": recipe.lora.r, "eval.n": recipe.eval.n, "data.n_train": recipe.data.n_train}
    positive |= {k: v for k, v in (("eval.every_minutes", recipe.eval.every_minutes),
                                   ("budget.minutes", recipe.budget.minutes)) if v is not None}  # fmt: skip
    for dotted, value in positive.items():
        if value <= 0:
            raise LowtuneError(f"{at(dotted)}: {dotted} must be positive, got {value}")
    for dotted in ("data.operands", "eval.operands"):
        section, key = dotted.split(".")
        value = getattr(getattr(recipe, section), key)
        if value is not None and not 2 <= value <= 4:
            raise LowtuneError(f"{at(dotted)}: {dotted} must be 2..4, got {value}")
    from lowtune.tools import BUILTIN as TOOLS

    for dotted, tools in (("eval.tools", recipe.eval.tools), ("augment.tools", recipe.augment.tools)):
        for tool in tools:
            if ":" not in tool and tool.lower() not in TOOLS:
                raise LowtuneError(
                    f"{at(dotted)}: unknown tool {tool}{did_you_mean(tool.lower(), TOOLS)}; "
                    "a user tool is module.path:attribute"
                )
    tasks = ("arithmetic", "word_problems")
    if recipe.eval.task is not None and recipe.eval.task not in tasks:
        raise LowtuneError(
            f"{at('eval.task')}: unknown eval.task {recipe.eval.task}{did_you_mean(recipe.eval.task, tasks)}; "
            f"choose {', '.join(tasks)} or null"
        )
    if recipe.augment.tools and recipe.method != "sft":
        raise LowtuneError(f"{at('augment.tools')}: Toolformer augmentation feeds SFT; set method: sft")
    for dotted in ("augment.top_k", "augment.samples", "augment.batch_size"):
        value = getattr(recipe.augment, dotted.split(".")[1])
        if value is not None and value <= 0:
            raise LowtuneError(f"{at(dotted)}: {dotted} must be positive, got {value}")
    heldout = recipe.data.heldout
    if heldout is not None and (heldout < 0 or (isinstance(heldout, float) and heldout >= 1)):
        raise LowtuneError(f"{at('data.heldout')}: data.heldout is a row count or a fraction in [0, 1), got {heldout}")
    if not 1 <= recipe.data.digits <= 6:
        raise LowtuneError(f"{at('data.digits')}: data.digits must be 1..6, got {recipe.data.digits}")
    for dotted in ("data.operations", "eval.operations"):
        section, key = dotted.split(".")
        for op in getattr(getattr(recipe, section), key) or []:
            if op not in ("+", "-", "*"):
                raise LowtuneError(f"{at(dotted)}: unknown operation {op!r}; use +, - or *")


# ---------------------------------------------------------------- type coercion


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML value to the declared type, or raise naming the field."""
    if tp is Any or tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # transformers writes `SchedulerType | str`: the string must still be one of the enum's values.
        for option in options:
            if isinstance(option, type) and issubclass(option, enum.Enum):
                return _coerce(value, option, key, where)
        # Prefer an exact type match before trying conversions (e.g. str stays str).
        for option in sorted(options, key=lambda o: not (isinstance(o, type) and isinstance(value, o))):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except LowtuneError:
                pass
        hint = (
            " (quote text that contains ': ' or brackets)" if str in options and isinstance(value, (dict, list)) else ""
        )
        raise LowtuneError(f"{where}: {key} = {value!r} is not a valid {_type_name(tp)}{hint}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise LowtuneError(f"{where}: {key} should be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, key, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LowtuneError(f"{where}: {key} should be a mapping, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise LowtuneError(f"{where}: {key} must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise LowtuneError(f"{where}: {key} should be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise LowtuneError(f"{where}: {key} should be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise LowtuneError(f"{where}: {key} should be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise LowtuneError(f"{where}: {key} should be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise LowtuneError(f"{where}: {key} should be a string, got {value!r} (quote text that contains ': ')")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [m.value for m in tp]
        if value in valid:
            return value
        raise LowtuneError(f"{where}: {key} is {value!r}; choose one of {', '.join(map(str, valid))}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise LowtuneError(f"{where}: {key} should be {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def explain(method: str | None = None, train_defaults: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(field, default, doc) rows for every recipe field, for `lowtune recipes --explain`.

    `train_defaults` are lowtune's own defaults for `train` fields; they are shown instead of TRL's.
    """
    train_defaults = train_defaults or {}
    rows = []
    for section in dataclasses.fields(Recipe):
        cls = SECTIONS[section.name]
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                rows.append((f"{section.name}.{f.name}", repr(default), f.metadata.get("doc", "")))
        else:
            rows.append((section.name, "", section.metadata.get("doc", "")))
    if method:
        cls = train_config_class(method)
        for f in dataclasses.fields(cls):
            if f.init and (f.name in _TRAIN_HIGHLIGHTS or f.name in train_defaults):
                help_ = (f.metadata.get("help") or "").split(". ")[0]
                default = f"{train_defaults[f.name]!r} (lowtune)" if f.name in train_defaults else repr(f.default)
                rows.append((f"train.{f.name}", default, help_))
        rows.append(("train.*", "", f"any other field of {TRAIN_CONFIG_CLASSES[method]}"))
    return rows


_TRAIN_HIGHLIGHTS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "logging_steps",
    "save_steps",
    "max_length",
    "packing",
    "completion_only_loss",
    "loss_type",
    "precompute_ref_log_probs",
    "seed",
    # PPO (lowtune.rl.ppo.PPOConfig)
    "num_mini_batches",
    "num_ppo_epochs",
    "max_new_tokens",
    "temperature",
    "kl_coef",
    "kl_estimator",
    "kl_target",
    "gamma",
    "lam",
    "cliprange",
    "cliprange_value",
    "vf_coef",
    "missing_eos_penalty",
)
