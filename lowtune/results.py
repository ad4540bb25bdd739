"""What a training run reports, typed: each method module returns a `RunSummary`; the console table
(`ui.run_summary`) reads its fields, and `to_dict()` is the run's summary.json.

A RunSummary also reads like that JSON (`summary["eval_after"]["accuracy"]`), for scripts that compare runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar


@dataclasses.dataclass
class Fit:
    """What `fit` measured (the training figures of summary.json)."""

    wall_time_s: float  # training time, periodic evaluations left out
    steps: int
    s_per_step: float
    tokens: int
    tokens_per_s: float
    peak_memory_mb: float
    trainable_params: int
    first_loss: float | None
    final_loss: float | None
    device: str
    quantization: str
    eval_time_s: float
    eval_during: list[dict[str, Any]]
    stopped_by_budget: bool


@dataclasses.dataclass
class HeldoutAccuracy:
    """Greedy accuracy on the recipe's held-out task (`eval.task`)."""

    task: str
    n: int
    accuracy: float
    example: str  # the first reply, as the model wrote it
    mean_reply_tokens: float = 0.0  # mean length of the replies in tokens
    tools: list[str] | None = None  # eval.tools: the tools the model could call
    replies_with_a_call: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return out if self.tools else {k: v for k, v in out.items() if k not in ("tools", "replies_with_a_call")}


@dataclasses.dataclass
class PairwiseAccuracy:
    """A reward model's held-out pairs scored chosen above rejected."""

    n: int
    accuracy: float
    mean_margin: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImplicitRewardAccuracy:
    """Held-out pairs where the method's reward of the chosen reply beats the rejected one's: DPO's implicit
    reward beta * log(pi/ref), ORPO's beta * (mean per-token log pi)."""

    n: int
    accuracy: float
    mean_margin: float
    chosen_reward: float
    rejected_reward: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, float], n: int) -> ImplicitRewardAccuracy:
        """From the `eval_rewards/*` metrics of TRL's DPO or ORPO `evaluate()` on `n` held-out pairs."""
        return cls(
            n=n,
            accuracy=metrics["eval_rewards/accuracies"],
            mean_margin=metrics["eval_rewards/margins"],
            chosen_reward=metrics["eval_rewards/chosen"],
            rejected_reward=metrics["eval_rewards/rejected"],
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


T = TypeVar("T", HeldoutAccuracy, PairwiseAccuracy)


@dataclasses.dataclass
class BeforeAfter(Generic[T]):
    """A score before training (None when not taken) and after it (None when the task is off)."""

    before: T | None
    after: T | None


class SummaryMapping(Mapping):
    """A summary that reads as the JSON it writes (`to_dict()`): summary["steps"], dict(summary), ==."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclasses.dataclass(eq=False)  # compares as the JSON it reads like (collections.abc.Mapping's ==)
class RunSummary(SummaryMapping):
    method: str
    model: str
    rows: int  # training rows (pairs, prompts) after skipping bad ones
    fit: Fit
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method's settings, as TRL used them
    heldout: BeforeAfter[HeldoutAccuracy] | None = None  # methods that generate: eval.task before and after
    pairwise: BeforeAfter[PairwiseAccuracy] | None = None  # reward models
    preference: ImplicitRewardAccuracy | None = None  # DPO and ORPO, after training
    has_preference: bool = False  # DPO and ORPO record preference_after even without held-out pairs (as null)
    augmentation: dict[str, Any] | None = None  # Toolformer's statistics
    skipped_rows: list[dict[str, Any]] | None = None  # bad rows passed over (preference data)
    placement: dict[str, Any] | None = None  # set by `recipes.train`
    processes: int = 1
    plan: dict[str, Any] | None = None  # `lowtune train --fit`: the plan, and on CUDA the peak measured
    smoke: bool = False  # `lowtune train --smoke`: 2 steps and 2 held-out problems, a check that the recipe runs

    def to_dict(self) -> dict[str, Any]:
        """summary.json."""

        def plain(section):
            return None if section is None else section.to_dict()

        out: dict[str, Any] = {"method": self.method, "model": self.model, "rows": self.rows, **self.details}
        if self.skipped_rows is not None:
            out["skipped_rows"] = self.skipped_rows
        if self.augmentation is not None:
            out["augmentation"] = self.augmentation
        out |= dataclasses.asdict(self.fit)
        if self.has_preference:
            out["preference_after"] = plain(self.preference)
        if self.heldout is not None:
            out |= {"eval_before": plain(self.heldout.before), "eval_after": plain(self.heldout.after)}
        if self.pairwise is not None:
            out |= {"pairwise_before": plain(self.pairwise.before), "pairwise_after": plain(self.pairwise.after)}
        out |= {"placement": self.placement, "processes": self.processes}
        if self.plan is not None:
            out["plan"] = self.plan
        if self.smoke:
            out["smoke"] = True
        return out


@dataclasses.dataclass(eq=False)  # compares as the JSON it reads like, as RunSummary
class PipelineSummary(SummaryMapping):
    """A pipeline's summary.json: each stage's summary as its own summary.json holds it (with its number, method and
    directory), the totals, and the held-out accuracy before the first stage and after each."""

    model: str
    stages: list[dict[str, Any]]  # {"stage": 1, "method": "sft", "dir": "stages/1-sft", **that stage's summary.json}
    placement: dict[str, Any] | None = None
    processes: int = 1
    plan: dict[str, Any] | None = None  # `lowtune train --fit`: the plan (each stage's), and on CUDA the peak measured
    smoke: bool = False

    @property
    def method(self) -> str:
        return "pipeline"

    def heldout_curve(self) -> list[dict[str, Any]]:
        """[{after: base | <n>-<method>, task, n, accuracy}]: the base's score (the first stage's eval_before, when
        taken), then the score after each stage that has one."""
        points = []
        first = self.stages[0].get("eval_before") if self.stages else None
        if first:
            points.append({"after": "base", "task": first["task"], "n": first["n"], "accuracy": first["accuracy"]})
        for stage in self.stages:
            after = stage.get("eval_after")
            if after:
                name = f"{stage['stage']}-{stage['method']}"
                points.append({"after": name, "task": after["task"], "n": after["n"], "accuracy": after["accuracy"]})
        return points

    def to_dict(self) -> dict[str, Any]:
        """summary.json."""
        last = self.stages[-1] if self.stages else {}
        out: dict[str, Any] = {
            "method": "pipeline",
            "model": self.model,
            "stages": self.stages,
            "heldout_curve": self.heldout_curve(),
            "steps": sum(s.get("steps", 0) for s in self.stages),
            "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in self.stages), 2),
            "eval_before": self.stages[0].get("eval_before") if self.stages else None,
            "eval_after": last.get("eval_after"),
            "placement": self.placement,
            "processes": self.processes,
        }
        if self.plan is not None:
            out["plan"] = self.plan
        if self.smoke:
            out["smoke"] = True
        return out
