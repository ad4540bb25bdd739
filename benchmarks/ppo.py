"""PPO with the builtin SmolLM2-135M: accuracy on arithmetic, and the memory of one shared base.

    python benchmarks/ppo.py arithmetic                  # runs `lowtune train ppo` (about 30 min on 2 cores)
    python benchmarks/ppo.py arithmetic --run runs/ppo   # reports on a finished run
    python benchmarks/ppo.py memory                      # one base vs four models (a few minutes)

arithmetic: held-out 2-digit addition accuracy (greedy, 100 problems never trained on) before and
after, and per rollout the accuracy reward, the share of responses that ended, their length and the
KL to the reference, from the run's metrics.jsonl. Writes results/ppo_arithmetic.{json,md,png}.

memory: the same PPO steps (one rollout and its 4 optimizer steps, a reward adapter as the score) in
two designs, each in a fresh process: lowtune's single base carrying policy, value and reward adapters
(reference = adapters off), against policy, reference, value and reward as four separately loaded
models. Peak resident memory is reported whole and above the process's footprint after imports
(what the models and training add), at the builtin's shape (real weights) and at the
Qwen2.5-0.5B shape (random weights from its config: nothing is downloaded). Writes
results/ppo_memory.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, train_run, write_report  # noqa: E402
from lowtune import ui  # noqa: E402
from lowtune.rl.model import REFERENCE, REWARD, VALUE  # noqa: E402

# Qwen2.5-0.5B's published config (hidden 896, 24 layers, 14/2 heads, vocab 151936, tied embeddings).
QWEN_05B = dict(
    model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
SHAPES = {
    "smollm2-135m": dict(per_device=4, new_tokens=32),
    "qwen2.5-0.5b-shape": dict(per_device=2, new_tokens=16),
}


def arithmetic(args) -> None:
    run = args.run or train_run(ROOT / "recipes" / "ppo.yaml", "ppo-benchmark", args.overrides)
    summary = json.loads((run / "summary.json").read_text())
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rollouts = [r for r in logs if "score" in r]
    start = logs[0]["time"] - summary["wall_time_s"] * logs[0]["step"] / summary["steps"]
    curve = [
        {"step": r["step"], "minutes": round((r["time"] - start) / 60, 2), "score": r["score"],
         "accuracy_reward": r["rewards/accuracy_reward"], "ended": r["ended_fraction"],
         "response_length": r["response_length"], "kl": r["kl"], "explained_variance": r["explained_variance"]}
        for r in rollouts
    ]  # fmt: skip
    if not summary.get("eval_after"):
        raise SystemExit(f"{run} was trained with eval.task=null; the benchmark needs held-out accuracy")
    before, after = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
    fifth = max(len(curve) // 5, 1)
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    report = {
        "benchmark": "ppo_arithmetic",
        "machine": machine_info(),
        "run": str(run),
        "recipe": yaml.safe_load((run / "config.yaml").read_text()),
        "train_minutes": round(summary["wall_time_s"] / 60, 2),
        "steps": summary["steps"],
        "rollouts": len(curve),
        "responses": len(curve) * summary["rollout_size"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "heldout_accuracy_before": before,
        "heldout_accuracy_after": after,
        **{f"{k}_first_fifth": mean(curve[:fifth], k) for k in ("accuracy_reward", "ended", "response_length", "kl")},
        **{f"{k}_last_fifth": mean(curve[-fifth:], k) for k in ("accuracy_reward", "ended", "response_length", "kl")},
        "curve": curve,
    }
    r = report
    rows = [
        ["held-out 2-digit addition, greedy (n=100)", f"{before:.0%} → {after:.0%}"],
        ["training time", f"{r['train_minutes']:.1f} min, {r['steps']} optimizer steps, {r['rollouts']} rollouts "
                          f"of {summary['rollout_size']} responses"],
        ["accuracy reward, sampled (first → last fifth of rollouts)",
         f"{r['accuracy_reward_first_fifth']:.2f} → {r['accuracy_reward_last_fifth']:.2f}"],
        ["responses that ended (EOS)", f"{r['ended_first_fifth']:.0%} → {r['ended_last_fifth']:.0%}"],
        ["mean response length, tokens",
         f"{r['response_length_first_fifth']:.0f} → {r['response_length_last_fifth']:.0f}"],
        ["KL to the reference per response, nats", f"{r['kl_first_fifth']:.2f} → {r['kl_last_fifth']:.2f}"],
        ["peak memory (RSS)", f"{summary['peak_memory_mb'] / 1024:.1f} GiB"],
    ]  # fmt: skip
    stem = args.out / "ppo_arithmetic"
    write_report(stem, report, ["figure", "value"], rows, {"before": before, "after": after}, "held-out accuracy")
    _curve_plot(stem, curve, before, after, report)
    ui.summary_table("PPO on 2-digit addition (SmolLM2-135M)", [tuple(x) for x in rows])


def _curve_plot(stem: Path, curve: list[dict], before: float, after: float, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [c["minutes"] for c in curve]
    window = 5
    smooth = [sum(c["accuracy_reward"] for c in curve[max(0, i - window + 1) : i + 1]) / min(i + 1, window)
              for i in range(len(curve))]  # fmt: skip
    ax1.plot(xs, [c["accuracy_reward"] for c in curve], alpha=0.3, label="per rollout")
    ax1.plot(xs, smooth, label=f"mean of last {window}")
    ax1.set_xlabel("training minutes")
    ax1.set_ylabel("accuracy reward (sampled)")
    ax1.set_title(f"held-out greedy accuracy {before:.0%} → {after:.0%}")
    ax1.legend()
    ax2.plot(xs, [c["response_length"] for c in curve], label="response length (tokens)")
    ax2.plot(xs, [100 * c["ended"] for c in curve], label="ended with EOS (%)")
    ax2.set_xlabel("training minutes")
    ax2.legend()
    fig.suptitle(f"PPO on SmolLM2-135M, 2-digit addition — {describe(report['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_name(stem.name + "_curve.png"), dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- memory


def memory(args) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            subprocess.run([sys.executable, __file__, "_prepare", shape, "-", tmp], check=True)
            for design in ("shared", "four"):
                out = subprocess.run(
                    [sys.executable, __file__, "_measure", shape, design, tmp], capture_output=True, text=True
                )
                if out.returncode != 0:
                    raise SystemExit(out.stdout + out.stderr)
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                ui.say(f"{shape} {design}: peak {results[-1]['peak_mb']:.0f} MB")
    by = {(r["shape"], r["design"]): r for r in results}
    rows, bars = [], {}
    for shape in SHAPES:
        shared, four = by[shape, "shared"], by[shape, "four"]
        ratio_added = shared["added_mb"] / four["added_mb"]
        rows.append([
            shape, f"{shared['peak_mb'] / 1024:.2f} / {four['peak_mb'] / 1024:.2f} GiB",
            f"{shared['peak_mb'] / four['peak_mb']:.0%}",
            f"{shared['added_mb'] / 1024:.2f} / {four['added_mb'] / 1024:.2f} GiB", f"{ratio_added:.0%}",
            f"{shared['seconds']:.0f} / {four['seconds']:.0f} s",
        ])  # fmt: skip
        bars[f"{shape}\none base"] = shared["added_mb"] / 1024
        bars[f"{shape}\nfour models"] = four["added_mb"] / 1024
    report = {"benchmark": "ppo_memory", "machine": machine_info(), "results": results}
    columns = ["model shape", "peak RSS, one base / four models", "ratio", "added by models + training", "ratio",
               "time for the steps"]  # fmt: skip
    write_report(args.out / "ppo_memory", report, columns, rows, bars, "GiB above the post-import footprint")
    ui.summary_table("PPO memory: one base with adapters vs four models", [(r[0], " | ".join(r[1:])) for r in rows])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _base(shape: str):
    """A fresh base model of the shape: the builtin's real weights, or random weights from Qwen2.5-0.5B's config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lowtune import models
    from lowtune.config import ModelConfig

    if shape == "smollm2-135m":
        return models.load(ModelConfig(name="smollm2-135m-instruct"))[0]
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**QWEN_05B), dtype=torch.float32)


def _prepare(shape: str, design: str, tmp: str) -> None:
    """A reward adapter of the shape (random LoRA B and score head), as `lowtune train reward` saves one."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    from lowtune import models
    from lowtune.config import LoraConfig

    config = _base(shape).config
    config.num_labels = 1
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    peft = get_peft_model(classifier, models.peft_config(LoraConfig(), "SEQ_CLS"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(str(Path(tmp) / f"reward-{shape}"))


def _measure(shape: str, design: str, tmp: str) -> None:
    """In a fresh process: build one design's models, run one PPO rollout and its 4 updates, print JSON."""
    import resource
    import time

    from peft import get_peft_model

    from lowtune import data, models
    from lowtune.config import DataConfig, LoraConfig
    from lowtune.rl import ActorCritic, PPOConfig, PPOTrainer
    from lowtune.scoring import encode

    torch.manual_seed(0)
    setup = SHAPES[shape]
    tokenizer = models.load_tokenizer(models.resolve_path("smollm2-135m-instruct"))
    lora = models.peft_config(LoraConfig(), "CAUSAL_LM")
    prompts = data.load(DataConfig(n_train=64), kind="prompt", system_prompt=None)
    baseline = _rss_mb()
    start = time.perf_counter()
    if design == "shared":
        model = ActorCritic.build(get_peft_model(_base(shape), lora), Path(tmp) / f"reward-{shape}")
    else:
        bases = [_base(shape) for _ in range(4)]
        model = FourModels(*(get_peft_model(b, lora) if i != 1 else b for i, b in enumerate(bases)))
    args = PPOConfig(
        output_dir=str(Path(tmp) / f"{shape}-{design}"), max_steps=4, per_device_train_batch_size=setup["per_device"],
        num_mini_batches=2, num_ppo_epochs=2, max_new_tokens=setup["new_tokens"], save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = PPOTrainer(
        model=model, args=args, train_dataset=prompts, processing_class=tokenizer,
        reward_encode=lambda conversation: encode(tokenizer, conversation, 256)[0],
    )  # fmt: skip
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = dict(shape=shape, design=design, baseline_mb=round(baseline), peak_mb=round(peak),
                  added_mb=round(peak - baseline), seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    print(json.dumps(result))


class FourModels(nn.Module):
    """Policy, reference, value and reward as four separately loaded models: the design lowtune avoids,
    with the interface of lowtune.rl.ActorCritic that the PPO trainer uses."""

    accepts_loss_kwargs = False
    has_reward_adapter = True

    def __init__(self, policy, reference, value, reward):
        super().__init__()
        self.peft, self.reference, self.value, self.reward = policy, reference.requires_grad_(False), value, reward
        hidden = reference.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        self.score_head = nn.Linear(hidden, 1, bias=False).requires_grad_(False)
        reward.requires_grad_(False)

    def hidden(self, role, input_ids, attention_mask, position_ids=None):
        model = {REFERENCE: self.reference, VALUE: self.value, REWARD: self.reward}.get(role, self.peft)
        decoder = model.get_base_model().get_decoder() if hasattr(model, "get_base_model") else model.get_decoder()
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def activate(self, role):
        pass  # each role is its own model

    def values(self, hidden):
        return self.value_head(hidden.float()).squeeze(-1)

    def scores(self, hidden):
        return self.score_head(hidden.float()).squeeze(-1)

    @property
    def lm_head(self):
        return self.peft.get_base_model().get_output_embeddings()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_prepare", "_measure"):
        (_prepare if sys.argv[1] == "_prepare" else _measure)(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["arithmetic", "memory"])
    parser.add_argument("--run", type=Path, help="arithmetic: report on this finished run instead of training")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for the training run")
    args = parser.parse_intermixed_args()
    (arithmetic if args.what == "arithmetic" else memory)(args)


if __name__ == "__main__":
    main()
