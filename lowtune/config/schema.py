"""The recipe schema: one dataclass per YAML section, each field declared with its doc and its rule.

A field's `_doc(...)` is the one source for what it accepts: its `choices` are written into the doc that
`lowtune recipes --explain` prints and are what `Section.check` accepts, and so are its `positive` and `between`
rules. A section's own `check` adds the rules that need a message of their own or more than one field.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lowtune.config.coerce import choose_one_of
from lowtune.errors import LowtuneError, did_you_mean

At = Callable[[str], str]  # dotted key -> where it was set: "r.yaml:4", "override" or "recipe"

# The default system prompt of reasoning recipes (GRPO), in the DeepSeek-R1 format.
REASONING_PROMPT = (
    "Think about the problem step by step inside <think> </think> tags, then give only the final "
    "answer inside <answer> </answer> tags."
)

OPERATIONS = ("+", "-", "*")


def _sft_config() -> type:
    from trl import SFTConfig

    return SFTConfig


def _grpo_config() -> type:
    from lowtune.config.grpo import GRPOConfig  # TRL's plus skip_zero_advantage

    return GRPOConfig


def _reward_config() -> type:
    from trl import RewardConfig

    return RewardConfig


def _dpo_config() -> type:
    from trl import DPOConfig

    return DPOConfig


def _kto_config() -> type:
    from trl import KTOConfig

    return KTOConfig


def _rloo_config() -> type:
    from trl import RLOOConfig

    return RLOOConfig


@contextlib.contextmanager
def _experimental():
    """Importing `trl.experimental` warns that its APIs may change; lowtune pins the TRL it tests (1.16.0)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
        yield


def _orpo_config() -> type:
    with _experimental():
        from trl.experimental.orpo import ORPOConfig  # tested with TRL 1.16.0

    return ORPOConfig


def _online_dpo_config() -> type:
    with _experimental():
        from trl.experimental.online_dpo import OnlineDPOConfig  # tested with TRL 1.16.0

    return OnlineDPOConfig


def _ppo_config() -> type:
    from lowtune.rl.config import PPOConfig  # TRL 1.16 has no PPO: lowtune's own, a transformers TrainingArguments

    return PPOConfig


def _rejection_sampling_config() -> type:
    from lowtune.config.rejection_sampling import RejectionSamplingConfig  # SFTConfig plus the sampling

    return RejectionSamplingConfig


# method -> the config class its `train` section is checked against and passed to, imported on first use
# (importing trl takes seconds).
TRAIN_CONFIG_CLASSES: dict[str, Callable[[], type]] = {
    "sft": _sft_config,
    "grpo": _grpo_config,
    "reward": _reward_config,
    "dpo": _dpo_config,
    "ppo": _ppo_config,
    "kto": _kto_config,
    "rloo": _rloo_config,
    "orpo": _orpo_config,
    "online_dpo": _online_dpo_config,
    "rejection_sampling": _rejection_sampling_config,
}
# The methods that sample completions of prompts and score them with the rule rewards: their `auto` system
# prompt is the reasoning prompt.
REASONING_METHODS = ("grpo", "rloo", "online_dpo", "rejection_sampling")
# The sections a pipeline's stage may set (merged over the recipe's own); model, lora and output are the pipeline's.
STAGE_SECTIONS = ("method", "data", "train", "rewards", "eval", "augment", "budget")
# The methods that put a fresh adapter on the bare base themselves and take their reference by switching it off: a
# later stage of a pipeline merges the adapter so far into the base first (the reference is the model so far).
FRESH_ADAPTER_METHODS = ("dpo", "kto", "online_dpo")


def train_config_class(method: str) -> type:
    """The config class of `method`'s `train` section (e.g. `trl.SFTConfig`)."""
    return TRAIN_CONFIG_CLASSES[method]()


def _name(value: Any) -> str:
    """A value as YAML writes it."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _or(names: list[str]) -> str:
    """'a', 'a or b', 'a, b, or c'."""
    if len(names) <= 2:
        return " or ".join(names)
    return f"{', '.join(names[:-1])}, or {names[-1]}"


def _doc(
    text: str,
    choices: Mapping[Any, str] | Iterable[Any] = (),
    positive: bool = False,
    between: tuple[int, int] | None = None,
    **kw: Any,
) -> Any:
    """A documented field, with its rule.

    `choices` are its valid values, or a mapping of each to a note; they are written into the doc after `text`.
    `positive`: the value must be above 0. `between`: the value must lie in [low, high], written into the doc too.
    A field that is None (optional and unset) is not checked.
    """
    notes = choices if isinstance(choices, Mapping) else dict.fromkeys(choices, "")
    meta: dict[str, Any] = {"doc": text}
    if notes:
        listed = _or([f"{_name(v)} ({note})" if note else _name(v) for v, note in notes.items()])
        meta |= {"doc": f"{text}: {listed}" if text else listed, "choices": tuple(notes)}
    if positive:
        meta["positive"] = True
    if between:
        meta |= {"doc": f"{meta['doc']}, {between[0]} to {between[1]}", "between": between}
    return field(metadata=meta, **kw)


def _unknown(what: str, value: str, names: Iterable[str]) -> str:
    return f"unknown {what} {value}{did_you_mean(value, names)}"


def _check_tools(dotted: str, tools: list[str], at: At) -> None:
    """Builtin tool names are checked now; a user tool (module:attr) is imported when it is used."""
    from lowtune.tools import BUILTIN

    for tool in tools:
        if ":" not in tool and tool.lower() not in BUILTIN:
            raise LowtuneError(f"{at(dotted)}: {_unknown('tool', tool, BUILTIN)}; a user tool is module.path:attribute")


class Section:
    """A recipe section. `check` enforces the rules its fields declare; a section extends it with the rest."""

    def check(self, name: str, at: At) -> None:
        """Raise a LowtuneError for the first field (of section `name`) that breaks its rule."""
        for f in dataclasses.fields(self):
            value, dotted, meta = getattr(self, f.name), f"{name}.{f.name}", f.metadata
            if value is None:
                continue
            for item in value if isinstance(value, list) else [value]:
                if "choices" in meta and item not in meta["choices"]:
                    hint = choose_one_of(str(item), [_name(v) for v in meta["choices"]])
                    if isinstance(value, list):  # a list field is named in the plural: operations
                        raise LowtuneError(f"{at(dotted)}: unknown {f.name.removesuffix('s')} {item!r}; {hint}")
                    raise LowtuneError(f"{at(dotted)}: {dotted} is {item!r}; {hint}")
            if meta.get("positive") and value <= 0:
                raise LowtuneError(f"{at(dotted)}: {dotted} must be positive, got {value}")
            if "between" in meta:
                low, high = meta["between"]
                if not all(low <= v <= high for v in (value if isinstance(value, list) else [value])):
                    raise LowtuneError(f"{at(dotted)}: {dotted} must be {low}..{high}, got {value}")

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The valid values of field `name`."""
        return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


@dataclass
class ModelConfig(Section):
    name: str = _doc(
        "builtin model name (`lowtune models`), Hugging Face model id, or local directory",
        default="smollm2-135m-instruct",
    )
    quantization: str = _doc(
        "weights of the frozen base model",
        choices={"auto": "nf4 on CUDA, none on CPU", "nf4": "QLoRA 4-bit", "int8": "", "none": "full precision"},
        default="auto",
    )
    dtype: str = _doc(
        "compute dtype",
        choices={
            "auto": "bfloat16 on CUDA with bf16 support, else float16 on CUDA, float32 on CPU",
            "float32": "",
            "bfloat16": "",
            "float16": "",
        },
        default="auto",
    )
    device: str = _doc(
        "where to train", choices={"auto": "CUDA if available, else CPU", "cpu": "", "cuda": ""}, default="auto"
    )
    gradient_checkpointing: bool | str = _doc(
        "recompute activations in backward (far less memory, about 25% slower)",
        choices={"auto": "on with CUDA, where memory is the limit; off on CPU", True: "", False: ""},
        default="auto",
    )
    logprob_kernel: str = _doc(
        "per-token log-probs inside TRL's GRPO and RLOO trainers",
        choices={
            "auto": "lowtune's token_logprobs on CPU, where its forward + backward took 1.48 s against 7.47 s for "
            "TRL's chunked path at the SmolLM2-135M shape, benchmarks/results/logprobs.md; TRL's own on CUDA",
            "lowtune": "its PyTorch path on any device",
            "trl": "",
        },
        default="auto",
    )
    trust_remote_code: bool = _doc(
        "allow models that ship their own Python code (off unless you trust the source)",
        default=False,
    )


@dataclass
class LoraConfig(Section):
    r: int = _doc("LoRA rank", positive=True, default=16)
    alpha: float = _doc("LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)", default=32)
    dropout: float = _doc("dropout on the LoRA input (off in PPO, whose ratio needs one policy)", default=0.0)
    target_modules: list[str] | str = _doc(
        "modules that get adapters: `all-linear` or a list of module names", default="all-linear"
    )
    use_dora: bool = _doc("weight-decomposed LoRA (DoRA, Liu et al. 2024)", default=False)
    use_rslora: bool = _doc("rank-stabilized scaling alpha / sqrt(r) (Kalajdzievski 2023)", default=False)
    start_from: str | None = _doc(
        "train this PEFT adapter further (a run or adapter directory on the same base) instead of a fresh one; "
        "its rank and target modules are the adapter's. A pipeline's later stages start from the stage before",
        default=None,
    )


@dataclass
class DataConfig(Section):
    source: str = _doc(
        "builtin task (`arithmetic`; `multistep`: 3 to 5 operands with precedence and parentheses, each reply a "
        "worked trace <think>14 × 3 = 42. 23 + 42 = 65.</think><answer>65</answer>; `arithmetic-text`: short "
        "stories with 3-digit arithmetic, each the reply to the word problem it answers, for Toolformer), local "
        "file (.jsonl/.json/.csv/.parquet) or directory, or Hugging Face dataset name",
        default="arithmetic",
    )
    format: str = _doc(
        "how rows are read",
        choices={
            "auto": "detect from columns",
            "messages": "",
            "prompt_completion": "",
            "text": "",
            "prompt_answer": "",
            "gsm8k": "question + answer ending in `#### n`",
            "preference": "pairs (reward, dpo, orpo, kto): prompt, chosen, rejected",
            "preference_implicit": "pairs: chosen, rejected sharing a prompt",
            "hh_rlhf": "pairs: Human:/Assistant: transcripts",
            "unpaired": "kto: prompt, completion, label (true: desirable, false: undesirable)",
        },
        default="auto",
    )
    system_prompt: str | None = _doc(
        "system message prepended to each prompt: `auto` (the think/answer reasoning prompt for "
        "GRPO, RLOO and online DPO, none for the others), null for none, or your own text",
        default="auto",
    )
    subset: str | None = _doc("dataset configuration name for hub datasets", default=None)
    data_dir: str | None = _doc("folder inside a hub dataset (HH-RLHF: harmless-base, helpful-base, ...)", default=None)
    split: str = _doc("split to train on (hub datasets and directories)", default="train")
    max_rows: int | None = _doc("use at most this many rows (after shuffling with seed)", default=None)
    heldout: int | float | None = _doc(
        "reward/dpo/orpo: rows held out from the END of a data file for pairwise accuracy, never trained on "
        "(a count, or a fraction below 1); default 10% up to 500. The arithmetic task uses its held-out problems. "
        "KTO trains on every row",
        default=None,
    )
    bad_rows: str = _doc(
        "rows that cannot be read",
        choices={
            "error": "stop and list every bad row",
            "skip": "drop them, list them, and count them in summary.json",
        },
        default="error",
    )
    seed: int = _doc("seed for the builtin task and row shuffling", default=0)
    n_train: int = _doc(
        "arithmetic, multistep, arithmetic-text: number of training problems", positive=True, default=2000
    )
    digits: int = _doc(
        "arithmetic, arithmetic-text: digits per operand; multistep: of the numbers added and subtracted (a "
        "factor of × has one digit)",
        between=(1, 6),
        default=2,
    )
    operations: list[str] = _doc(
        "operations the arithmetic task draws from", choices=OPERATIONS, default_factory=lambda: ["+"]
    )
    operands: int = _doc("arithmetic: operands per problem", between=(2, 4), default=2)
    steps: int | list[int] = _doc(
        "multistep: operations per problem, one step of its worked trace each (2: 3 operands ... 4: 5 operands); "
        "a list mixes levels in equal shares, e.g. [3, 4]",
        between=(2, 4),
        default=3,
    )
    traces: bool = _doc(
        "multistep: the reply works the problem out (`<think>` its steps `</think><answer>n</answer>`); false: "
        "the answer alone (`<answer>n</answer>`), a direct-answer baseline",
        default=True,
    )

    def check(self, name: str, at: At) -> None:
        heldout, dotted = self.heldout, f"{name}.heldout"
        if heldout is not None and (heldout < 0 or (isinstance(heldout, float) and heldout >= 1)):
            raise LowtuneError(f"{at(dotted)}: {dotted} is a row count or a fraction in [0, 1), got {heldout}")
        if isinstance(self.steps, list) and (not self.steps or len(set(self.steps)) < len(self.steps)):
            raise LowtuneError(
                f"{at(name + '.steps')}: {name}.steps lists each level once, e.g. [3, 4]; got {self.steps}"
            )
        super().check(name, at)


@dataclass
class RewardsConfig(Section):
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
class EvalConfig(Section):
    task: str | None = _doc(
        "held-out task scored before and after training, or null to skip",
        choices={
            "arithmetic": "the builtin task's problems",
            "word_problems": "held-out questions like arithmetic-text's, answer = last number",
            "multistep": "the multistep task's held-out problems",
            "gsm8k": "the first eval.n rows of the GSM8K-format file eval.data",
        },
        default="arithmetic",
    )
    n: int = _doc("number of held-out problems", positive=True, default=100)
    digits: int | None = _doc("digits per operand (default: data.digits)", default=None)
    operations: list[str] | None = _doc("operations (default: data.operations)", choices=OPERATIONS, default=None)
    operands: int | None = _doc("operands per problem (default: data.operands)", between=(2, 4), default=None)
    steps: int | None = _doc(
        "multistep: operations per problem (default: data.steps, the first level of a list)",
        between=(2, 4),
        default=None,
    )
    data: str | None = _doc(
        "gsm8k: a data file of GSM8K rows (question, answer ending in `#### n`), e.g. GSM8K's test split",
        default=None,
    )
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
        positive=True,
        default=None,
    )

    def check(self, name: str, at: At) -> None:
        tasks, dotted = self.choices("task"), f"{name}.task"
        if self.task is not None and self.task not in tasks:
            raise LowtuneError(f"{at(dotted)}: {_unknown(dotted, self.task, tasks)}; choose {_or([*tasks, 'null'])}")
        if self.task == "gsm8k" and not self.data:
            raise LowtuneError(f"{at(dotted)}: {dotted} gsm8k scores a file: set {name}.data to GSM8K rows (.jsonl)")
        if self.task == "gsm8k" and not os.path.isfile(os.path.expanduser(self.data)):
            raise LowtuneError(f"{at(f'{name}.data')}: {name}.data {self.data}: no such file")
        _check_tools(f"{name}.tools", self.tools, at)
        super().check(name, at)


@dataclass
class AugmentConfig(Section):
    tools: list[str] = _doc(
        "SFT only: Toolformer augmentation first (Schick et al. 2023). The base model annotates each training "
        "reply (or text) with calls to these tools (calculator, calendar, search, or module:attr), keeps the "
        "calls that make the following text easier to predict, and SFT trains on the annotated rows; written "
        "to the run's augmented.jsonl. Empty: plain SFT",
        default_factory=list,
    )
    top_k: int | None = _doc(
        "positions per text (default: the paper's, calculator 20, others 5)", positive=True, default=None
    )
    samples: int | None = _doc(
        "calls sampled per position (default: calculator 10, others 5)", positive=True, default=None
    )
    tau_s: float | None = _doc("sampling threshold on p('[') (default: calculator 0, others 0.05)", default=None)
    tau_f: float | None = _doc("filtering threshold L- - L+ (default: calculator 0.5, others 1.0)", default=None)
    only_with_calls: bool = _doc(
        "train only on the rows that got a kept call (default: every row, those without a call as they were)",
        default=False,
    )
    batch_size: int = _doc("sequences per forward pass or sampling batch", positive=True, default=32)
    format: str = _doc(
        "how SFT sees the kept calls",
        choices={
            "inline": "written into the reply, [Calculator(12 + 30) -> 42]",
            "tool_calls": "native tool calls: the reply becomes assistant turns with tool_calls and tool messages "
            "with the results, rendered by the chat template with the tools' schemas (a ChatML model without "
            "tools in its template gets lowtune's)",
        },
        default="inline",
    )

    def check(self, name: str, at: At) -> None:
        _check_tools(f"{name}.tools", self.tools, at)
        super().check(name, at)


@dataclass
class BudgetConfig(Section):
    minutes: float | None = _doc(
        "stop training after this many minutes of training time (periodic evaluations excluded) and save "
        "the adapter as at the end of train.max_steps, which still caps the run; counted per invocation",
        positive=True,
        default=None,
    )


@dataclass
class OutputConfig(Section):
    dir: str = _doc("parent directory of run directories", default="runs")
    name: str | None = _doc(
        "run directory name (default: the recipe file's name, e.g. toolformer; without a file, the method); "
        "an existing one gets a -2, -3... suffix",
        default=None,
    )
    quiet: bool = _doc("no progress bar (for CI logs)", default=False)


@dataclass
class Recipe:
    method: str = _doc("training method", choices=tuple(TRAIN_CONFIG_CLASSES), default="sft")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: dict[str, Any] = _doc("fields of TRL's config class for the method, passed through", default_factory=dict)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stages: list[Stage] = _doc(
        "a pipeline: methods run in order on one adapter, each stage a mapping of method, data, train, rewards, "
        "eval, augment and budget merged over the recipe's own sections (docs/recipes.md, Pipelines)",
        default_factory=list,
    )

    def to_dict(self) -> dict[str, Any]:
        """The recipe as YAML writes it (a run's config.yaml); a pipeline's stages as they were written."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "stages":
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
        if self.stages:
            out["stages"] = [dict(stage.own) for stage in self.stages]
        return out

    def system_prompt(self) -> str | None:
        """The system message for prompts, with `auto` resolved per method."""
        if self.data.system_prompt == "auto":
            return REASONING_PROMPT if self.method in REASONING_METHODS else None
        return self.data.system_prompt

    def check(self, at: At, prefix: str = "") -> None:
        """Check the method and every section (`train` is checked against its config class when it is built).
        `prefix`: where a stage's sections sit (`stages[2].`), named in its errors."""
        pipeline = self.method == "pipeline"  # its stages are checked as they are built (lowtune.config.load)
        if not pipeline and self.method not in TRAIN_CONFIG_CLASSES:
            unknown = _unknown(prefix + "method", self.method, TRAIN_CONFIG_CLASSES)
            raise LowtuneError(f"{at(prefix + 'method')}: {unknown}")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if isinstance(section, Section):
                section.check(prefix + f.name, at)
        if pipeline:
            return
        if self.augment.tools and self.method != "sft":
            raise LowtuneError(f"{at(prefix + 'augment.tools')}: Toolformer augmentation feeds SFT; set method: sft")
        if self.lora.start_from and self.method in (*FRESH_ADAPTER_METHODS, "reward"):
            raise LowtuneError(
                f"{at('lora.start_from')}: {self.method} puts a fresh adapter on the bare base and cannot train an "
                f"existing one; merge it first (`lowtune merge RUN --out DIR`) and set model.name to DIR"
            )


@dataclass
class Stage:
    """One stage of a pipeline: its own fields as the recipe wrote them (`own`: method and the sections it sets, what
    config.yaml records) and its whole recipe (`recipe`: those merged over the pipeline's sections, checked)."""

    own: dict[str, Any]
    recipe: Recipe

    @property
    def method(self) -> str:
        return self.recipe.method


SECTIONS = typing.get_type_hints(Recipe)
