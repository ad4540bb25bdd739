"""`lowtune train|plan|generate|eval|augment|score|merge|export|models|recipes` — argparse front end; no method
logic here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lowtune.errors import LowtuneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowtune", description="LoRA/QLoRA post-training on one GPU or a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run a recipe: lowtune train RECIPE [section.field=value ...]")
    p.add_argument("recipe", nargs="?", help="a recipe YAML file or a shipped recipe name (`lowtune recipes`)")
    p.add_argument("overrides", nargs="*", help="overrides such as train.max_steps=50 model.name=tiny-random")
    p.add_argument("--quiet", action="store_true", help="no progress bar (CI logs)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (default: the recipe's newest run)",
    )
    p.add_argument(
        "--fit",
        metavar="MEMORY",
        help="before training, choose the per-device batch (keeping the effective batch) and checkpointing so the "
        "planned peak fits in MEMORY, e.g. 8GiB (`lowtune plan` shows the plan)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that the recipe runs end to end: 2 steps, 2 held-out problems, no time budget, short "
        "samples; saved as usual and marked as a smoke run in summary.json",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="data-parallel processes: runs `accelerate launch --num_processes N -m lowtune train ...`, one "
        "per GPU (on a machine without CUDA: torchrun, N CPU processes talking over gloo)",
    )

    p = sub.add_parser("plan", help="predict a recipe's peak memory before the run, and the settings that fit")
    p.add_argument("recipe", help="a recipe YAML file or a shipped recipe name")
    p.add_argument("overrides", nargs="*", help="overrides, as for lowtune train")
    p.add_argument("--device", choices=["cuda", "cpu"], help="plan for this device (default: this machine's)")
    p.add_argument("--gpu-memory", metavar="MEMORY", help="the GPU's memory, e.g. 8GiB (implies --device cuda)")
    p.add_argument("--gpu", metavar="NAME", help="a GPU by name, e.g. rtx4060 (implies --device cuda)")
    p.add_argument("--memory", metavar="MEMORY", help="a memory budget on --device cpu, e.g. 16GiB")
    p.add_argument("--fit", action="store_true", help="also find the settings that fit the memory")

    p = sub.add_parser("generate", help="chat with a model or a run's adapter")
    p.add_argument("model", help="run directory, adapter directory, builtin name, local model or hub id")
    p.add_argument("--prompt", required=True, action="append", help="user message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p.add_argument(
        "--tools",
        help="comma-separated tools the model may call, e.g. calculator: natively when its chat template has tools "
        "(<tool_call> JSON), else inline ([Calculator(2 + 2) -> 4])",
    )
    p.add_argument("--max-calls", type=int, default=1, help="tool calls per reply")
    p.add_argument("--trigger-top-k", type=int, help='inline calls: start one if "[" is among the k likeliest tokens')

    p = sub.add_parser("augment", help="Toolformer: annotate texts with the tool calls that help predict them")
    p.add_argument("model", help="run directory, adapter directory, builtin name, local model or hub id")
    p.add_argument("--data", default="arithmetic-text", help="arithmetic-text, or .jsonl of {text} or GSM8K rows")
    p.add_argument("--n", type=int, help="texts to annotate (default: all; 200 for arithmetic-text)")
    p.add_argument("--tools", default="calculator", help="comma-separated builtin names or module:attribute")
    p.add_argument("--out", required=True, help="output .jsonl (rows as --format writes them)")
    p.add_argument(
        "--format",
        default="inline",
        help="inline: {text, annotated, calls}, the calls written into the text, [Calculator(12 + 30) -> 42]; "
        "tool_calls: TRL's tool-calling rows {messages, tools}, each call an assistant tool_calls turn and a tool "
        "message, with the tools' JSON schemas",
    )
    for flag, kind, text in [
        ("--tau-s", float, "keep positions with p('[') above this"),
        ("--tau-f", float, "keep calls whose loss reduction is at least this"),
        ("--top-k", int, "positions per text"),
        ("--samples", int, "calls sampled per position"),
    ]:
        p.add_argument(flag, type=kind, help=text + " (default: the paper's per tool)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("eval", help="greedy accuracy on a held-out verifiable task")
    p.add_argument("model", help="run directory, adapter directory, builtin name, local model or hub id")
    p.add_argument("--task", default="arithmetic", choices=["arithmetic", "multistep", "gsm8k"])
    p.add_argument("--n", type=int, default=100, help="number of held-out problems (gsm8k: the file's first N rows)")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--operations", default="+", help="arithmetic: comma-separated, from + - *")
    p.add_argument("--operands", type=int, default=2, choices=[2, 3, 4], help="arithmetic: operands per problem")
    p.add_argument("--steps", type=int, default=3, choices=[2, 3, 4], help="multistep: operations per problem")
    p.add_argument("--data", metavar="FILE", help="gsm8k: GSM8K rows (question, answer ending in '#### n')")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation budget per answer (default: arithmetic 32, multistep 128, gsm8k 256)",
    )
    p.add_argument("--show", type=int, default=3, help="print this many example replies")

    p = sub.add_parser("score", help="score conversations with a trained reward model")
    p.add_argument("run", help="reward run directory or its adapter directory")
    p.add_argument("--prompt", help="user message that each --reply answers")
    p.add_argument("--reply", action="append", default=[], help="assistant reply to score (repeatable)")
    p.add_argument("--text", action="append", default=[], help="a whole HH-RLHF transcript, or plain text (repeatable)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("merge", help="merge a run's adapter into a full-precision base, verified")
    p.add_argument("run", help="run directory (or adapter directory)")
    p.add_argument("--out", required=True, help="new directory for the merged model")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument(
        "--base",
        default="auto",
        choices=["auto", "original", "dequantized"],
        help="auto: dequantized NF4 weights if the run trained on NF4, else the original weights",
    )

    p = sub.add_parser(
        "export", help="export a run or a model directory as GGUF (+ Ollama Modelfile), or a run's LoRA as GGUF"
    )
    p.add_argument("model", help="run directory (merged first), model directory, or builtin name")
    p.add_argument(
        "--format",
        default="gguf",
        choices=["gguf", "gguf-lora"],
        help="gguf: the whole (merged) model; gguf-lora: the adapter alone, for llama.cpp's --lora",
    )
    p.add_argument(
        "--quant",
        default="f16",
        choices=["f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m"],
        help="GGUF type; the k-quants (q6_k ... q3_k_m) need the llamacpp extra",
    )
    p.add_argument("--out", help="output .gguf file (default: beside the run or model)")

    sub.add_parser("models", help="list builtin models (size, cached or not)")

    p = sub.add_parser("recipes", help="list shipped recipes, or explain recipe fields")
    p.add_argument("--explain", metavar="METHOD", help="print every recipe field for METHOD with its doc")

    # Overrides may come after options too (`lowtune train sft --quiet train.max_steps=5`).
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command in ("train", "plan"):
        args.overrides += [e for e in extra if not e.startswith("-")]
        extra = [e for e in extra if e.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_libraries()
    from lowtune import ui

    try:
        return COMMANDS[args.command](args)
    except LowtuneError as e:
        ui.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted")
        return 130


def _quiet_libraries() -> None:
    """Library progress bars and warnings would drown lowtune's own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def cmd_train(args) -> int:
    from lowtune import recipes, ui
    from lowtune.config import load_recipe
    from lowtune.runs import RunDir

    if args.num_processes is not None:
        return _launch(args.num_processes, args.argv[1:])

    overrides = list(args.overrides)
    if args.recipe and "=" in args.recipe:  # `lowtune train --resume RUN a.b=c`: no recipe name given
        overrides.insert(0, args.recipe)
        args.recipe = None
    if args.resume and "=" in args.resume and not Path(args.resume).exists():  # `--resume a.b=c`: an override
        overrides.insert(0, args.resume)
        args.resume = "latest"
    if args.resume and args.resume != "latest":
        run_dir = Path(args.resume)
        if not RunDir(run_dir).config.is_file():
            raise LowtuneError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        recipe = load_recipe(RunDir(run_dir).config, overrides)  # the run's own recipe, as it started
    elif args.recipe:
        path = recipes.find_recipe(args.recipe)
        recipe = load_recipe(path, overrides)
        recipe.output.name = recipe.output.name or path.stem  # a run is named after its recipe
        run_dir = RunDir.latest(recipe) if args.resume else None
    else:
        raise LowtuneError("lowtune train needs a recipe (e.g. `lowtune train sft`) or --resume RUN_DIR")
    if args.smoke:
        if run_dir is not None:
            raise LowtuneError("--smoke starts a new run: drop --resume")
        smoke = recipes.smoke_overrides(recipe)
        overrides += smoke
        recipe = load_recipe(path, overrides)
        recipe.output.name = recipe.output.name or path.stem
        ui.say(f"smoke run: {' '.join(smoke)}")
    if args.quiet:
        recipe.output.quiet = True
    planned = None
    if args.fit:
        if run_dir is not None:
            raise LowtuneError("--fit chooses the settings of a new run; a resumed run keeps its own")
        from lowtune import plan
        from lowtune.plan import budget

        found = plan.fit(path, overrides, budget.parse_memory(args.fit), say=ui.say)
        if found.overrides:
            ui.say(f"--fit {args.fit}: {' '.join(found.overrides)} (planned {found.plan.total_mb / 1024:.2f} GiB)")
            recipe = load_recipe(path, [*overrides, *found.overrides])
            recipe.output.name = recipe.output.name or path.stem
            recipe.output.quiet = recipe.output.quiet or args.quiet
        else:
            ui.say(f"--fit {args.fit}: the recipe fits as it is (planned {found.plan.total_mb / 1024:.2f} GiB)")
        planned = {"memory": args.fit, "overrides": found.overrides, **found.plan.to_dict()}
    run, summary = recipes.train(recipe, resume=run_dir, plan=planned, smoke=args.smoke)
    ui.run_summary(run.path, summary)
    if args.smoke:
        steps = " + ".join(str(s["steps"]) for s in summary["stages"]) if recipe.stages else summary["steps"]
        ui.say(f"smoke run: the recipe ran end to end ({steps} steps); its scores mean nothing")
    return 0


def cmd_plan(args) -> int:
    from lowtune import plan, recipes, ui
    from lowtune.config import load_recipe
    from lowtune.plan import budget

    if sum(x is not None for x in (args.gpu_memory, args.gpu, args.memory)) > 1:
        raise LowtuneError("give one of --gpu-memory, --gpu and --memory")
    device, memory = args.device, None
    if args.gpu_memory or args.gpu:
        if device == "cpu":
            raise LowtuneError("--gpu-memory and --gpu plan for a GPU: drop --device cpu")
        device = "cuda"
        memory = budget.parse_memory(args.gpu_memory) if args.gpu_memory else budget.gpu_memory(args.gpu)
    elif args.memory:
        device, memory = device or "cpu", budget.parse_memory(args.memory)
    if args.fit and memory is None:
        raise LowtuneError("--fit needs the memory to fit: --gpu-memory 8GiB, --gpu NAME or --memory 16GiB")
    path = recipes.find_recipe(args.recipe)
    if args.fit:
        found = plan.fit(path, args.overrides, memory, device, say=ui.say)
        ui.plan_table(found.plan)
        if found.overrides:
            ui.say(f"fits with: {' '.join(found.overrides)}")
            chosen = {o.split("=", 1)[0] for o in found.overrides}
            kept = [o for o in args.overrides if o.split("=", 1)[0] not in chosen]
            ui.say(f"run it: lowtune train {args.recipe} {' '.join([*kept, *found.overrides])}")
        else:
            ui.say("fits as it is")
        return 0
    result = plan.plan(load_recipe(path, args.overrides), device, memory, say=ui.say)
    ui.plan_table(result)
    return 0 if result.fits is not False else 1


def cmd_generate(args) -> int:
    from lowtune import evaluate, models, ui

    model, tokenizer, name = models.load_for_inference(args.model, args.device, say=ui.say)
    if args.tools:
        from rich.markup import escape

        from lowtune.toolformer.generate import generate_with_tools
        from lowtune.tools import load_tool

        tools = [load_tool(t) for t in args.tools.split(",") if t.strip()]
        for prompt in args.prompt:
            reply, calls = generate_with_tools(
                model, tokenizer, prompt, tools, args.max_new_tokens, args.max_calls, args.trigger_top_k
            )
            ui.console.print(f"[bold]user:[/] {escape(prompt)}\n[bold]assistant:[/] {escape(reply)}")
            for call in calls:
                bad = "" if call["well_formed"] else " (not a call lowtune could run)"
                ui.say(f"called {call['tool']}({call['arg']}) -> {call['result']}{bad}")
        return 0
    replies = evaluate.generate(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0,
    )
    for prompt, reply in zip(args.prompt, replies, strict=True):
        ui.console.print(f"[bold]user:[/] {prompt}\n[bold]assistant:[/] {reply}")
    return 0


def _launch(n: int, train_args: list[str]) -> int:
    """`lowtune train --num-processes N ...` = `accelerate launch --num_processes N -m lowtune train ...`."""
    import subprocess

    import torch

    from lowtune import dist

    if n < 1:
        raise LowtuneError(f"--num-processes {n}: give 1 or more")
    if dist.distributed():
        raise LowtuneError("--num-processes inside a launched process: drop it (the launcher already started them)")
    argv, skip = [], False
    for arg in train_args:  # everything after `lowtune train`, less --num-processes N
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            argv.append(arg)
    gpus = torch.cuda.device_count()
    if gpus and n > gpus:
        raise LowtuneError(f"--num-processes {n}: this machine has {gpus} GPU(s); one process per GPU")
    if gpus:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines",
                  "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
        launch += ["--multi_gpu"] if n > 1 else []
    else:  # CPU processes talking over gloo: torchrun (accelerate launch --cpu starts one process, or needs MPI)
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    return subprocess.call([*launch, "-m", "lowtune", "train", *argv])


def cmd_augment(args) -> int:
    from lowtune import dist, models, ui
    from lowtune.config import AugmentConfig
    from lowtune.config.coerce import choose_one_of
    from lowtune.data.arithmetic_text import load_texts
    from lowtune.toolformer.augment import STATS_COLUMNS, Augmenter, write_results
    from lowtune.tools import load_tool

    dist.refuse("Toolformer augmentation (lowtune augment)")
    formats = AugmentConfig.choices("format")
    if args.format not in formats:
        raise LowtuneError(f"--format {args.format}: {choose_one_of(args.format, list(formats))}")
    out = Path(args.out)
    if out.exists():
        raise LowtuneError(f"--out {out} exists; lowtune never overwrites, choose a new file")
    tools = [load_tool(t) for t in args.tools.split(",") if t.strip()]
    texts, human = load_texts(args.data, args.n)
    model, tokenizer, name = models.load_for_inference(args.model, args.device, say=ui.say)
    settings = {"tau_s": args.tau_s, "tau_f": args.tau_f, "top_k": args.top_k, "samples": args.samples}
    augmenter = Augmenter(model, tokenizer, tools, settings)
    with ui.progress_bar("augment", len(texts)) as advance:
        results = augmenter.augment(texts, progress=advance)
    write_results(out, results, args.format, tools)
    ui.table("tool calls", STATS_COLUMNS, augmenter.stats_rows())
    summary = [("model", name), ("texts", str(len(results))), ("written", str(out))]
    if any(human):
        near = augmenter.agreement(results, human)
        summary += [("kept calls within 2 tokens of a human call", f"{near['kept_near_human']} of {near['kept']}"),
                    ("human calls with a kept call within 2 tokens",
                     f"{near['human_with_kept']} of {near['human_positions']}")]  # fmt: skip
    ui.summary_table("lowtune augment", summary)
    return 0


def cmd_eval(args) -> int:
    from lowtune import evaluate, models, ui

    if args.n <= 0:
        raise LowtuneError("--n must be positive")
    operations = [op.strip() for op in args.operations.split(",") if op.strip()]
    if not operations or any(op not in ("+", "-", "*") for op in operations):
        raise LowtuneError(f"--operations {args.operations!r}: use a comma-separated list of +, -, *")
    if args.task == "gsm8k" and not args.data:
        raise LowtuneError(
            "--task gsm8k scores a file: give --data FILE of GSM8K rows (question, answer ending in '#### n')"
        )
    # The problems first: a bad file stops before the model loads.
    problems = evaluate.heldout_problems(
        args.task, args.n, args.digits, operations, args.operands, args.steps, args.data
    )
    max_new_tokens = args.max_new_tokens or {"arithmetic": 32, "multistep": 128, "gsm8k": 256}[args.task]
    model, tokenizer, name = models.load_for_inference(args.model, args.device, say=ui.say)
    result = evaluate.accuracy(model, tokenizer, problems, max_new_tokens)
    rows = [[q, r.strip().replace("\n", " ")[:60], str(ref)] for q, r, ref in result.examples[: args.show]]
    ui.table("examples", ["question", "reply", "reference"], rows, whole=("reference",))  # a long question wraps
    described = {
        "arithmetic": f"{result.n} held-out, {args.digits} digit(s), {' '.join(operations)}",
        "multistep": f"{result.n} held-out, {args.steps} steps, {args.digits} digit(s)",
        "gsm8k": f"the first {result.n} rows of {args.data}",
    }[args.task]
    ui.summary_table(
        f"lowtune eval: {args.task}",
        [("model", name), ("problems", described), ("accuracy", f"{result.accuracy:.1%}")],
    )
    return 0


def cmd_score(args) -> int:
    from lowtune import ui
    from lowtune.scoring import RewardModel

    if args.reply and not args.prompt:
        raise LowtuneError("--reply needs --prompt (the user message it answers)")
    if args.prompt and not args.reply:
        raise LowtuneError("--prompt needs at least one --reply to score")
    if not args.reply and not args.text:
        raise LowtuneError('nothing to score: give --prompt "..." --reply "..." or --text "..."')
    texts = [[{"role": "user", "content": args.prompt}, {"role": "assistant", "content": r}] for r in args.reply]
    shown = list(args.reply)
    texts += args.text
    shown += [t.strip().replace("\n", " ") for t in args.text]
    model = RewardModel.load(args.run, args.device, say=ui.say)
    values = model.score(texts)
    rows = [[f"{v:+.3f}", s if len(s) <= 80 else s[:77] + "..."] for v, s in zip(values, shown, strict=True)]
    ui.table(f"reward scores ({args.run})", ["score", "reply" if args.reply and not args.text else "text"], rows)
    return 0


def cmd_merge(args) -> int:
    from lowtune import ui
    from lowtune.export.merge import merge

    report = merge(args.run, args.out, args.dtype, args.base)
    limits = report["tolerance"]
    ui.summary_table(
        "lowtune merge",
        [
            ("merged model", report["out"]),
            ("base weights", f"{report['base_model']} ({report['base_weights']})"),
            ("dtype", report["dtype"]),
            ("max total variation", f"{report['max_total_variation']:.2e} (limit {limits['max_total_variation']:g})"),
            ("mean KL", f"{report['mean_kl']:.2e} (limit {limits['mean_kl']:g})"),
            ("stop tokens", " ".join(report["stop_tokens"])),
            ("verified", "yes" if report["passed"] else "no"),
        ],
    )
    ui.say(f"loads with plain transformers: AutoModelForCausalLM.from_pretrained({report['out']!r})")
    return 0


def cmd_export(args) -> int:
    from lowtune import export, ui

    report = export.export(args.model, args.format, args.quant, args.out, say=ui.say)
    if args.format == "gguf-lora":
        checks = report["llama_cpp"]
        ui.summary_table(
            "lowtune export (LoRA GGUF)",
            [
                ("file", f"{report['file']} ({report['bytes'] / 2**20:,.1f} MiB, r={report['rank']})"),
                ("base model", report["base_model"]),
                ("adapted tensors", str(report["adapted_tensors"])),
                (
                    "verified",
                    f"yes, in llama.cpp with an f16 base: mean KL {checks['mean_kl']:.2e}, "
                    f"top-1 {checks['top1_agreement']:.1%}, greedy {checks['greedy_identical']}/{len(checks['greedy'])}"
                    if checks
                    else "no (llama.cpp not installed)",
                ),
            ],
        )
        ui.say(f"use: llama-cli -m BASE.gguf --lora {report['file']}  (BASE: lowtune export {report['base_model']})")
        return 0
    rows = [("file", f"{report['file']} ({report['bytes'] / 2**20:,.1f} MiB, {report['quant']})")]
    for client in ("transformers", "llama_cpp"):
        checks = report.get(client)
        if checks:
            greedy = f", greedy {checks['greedy_identical']}/{len(checks['greedy'])}" if "greedy" in checks else ""
            rows.append(
                (
                    client.replace("_", "."),
                    f"mean KL {checks['mean_kl']:.2e}, top-1 {checks['top1_agreement']:.1%}, "
                    f"tokens {'same' if checks['tokenizer_match'] else 'DIFFER'}{greedy}",
                )
            )
    rows += [
        ("limit", f"mean KL ≤ {report['max_mean_kl']:g}"),
        ("verified", "yes, with " + " and ".join(report["verified_with"]) if report["passed"] else "no"),
        ("stop", str(report["stop"])),
        ("Ollama", f"{report['modelfile']}  (ollama create NAME -f {report['modelfile']})"),
    ]
    ui.summary_table("lowtune export", rows)
    return 0


def cmd_models(args) -> int:
    from lowtune import builtin, ui

    rows = [
        [m.name, m.params, "yes" if builtin.is_cached(m.name) else "no", m.description]
        for m in builtin.BUILTINS.values()
    ]
    ui.table(f"builtin models (cache: {builtin.cache_dir()})", ["name", "params", "cached", "what"], rows)
    ui.say("any Hugging Face model id or local model directory works as model.name too")
    return 0


def cmd_recipes(args) -> int:
    from lowtune import recipes, ui
    from lowtune.config import TRAIN_CONFIG_CLASSES, explain, load_recipe

    if args.explain:
        if args.explain not in TRAIN_CONFIG_CLASSES:
            raise LowtuneError(f"unknown method {args.explain}; methods: {', '.join(TRAIN_CONFIG_CLASSES)}")
        ui.table(
            f"recipe fields for {args.explain}",
            ["field", "default", "what"],
            [list(r) for r in explain(args.explain, {**recipes.train_defaults(args.explain), "seed": "data.seed"})],
        )
        return 0
    rows = []
    for name, path in recipes.shipped_recipes().items():
        first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.stat().st_size else ""
        recipe = load_recipe(path)
        method = " → ".join(stage.method for stage in recipe.stages) or recipe.method
        rows.append([name, method, recipe.model.name, first])
    ui.table("shipped recipes (lowtune train NAME)", ["name", "method", "model", "what"], rows)
    return 0


COMMANDS = {
    "train": cmd_train,
    "plan": cmd_plan,
    "generate": cmd_generate,
    "augment": cmd_augment,
    "eval": cmd_eval,
    "score": cmd_score,
    "merge": cmd_merge,
    "export": cmd_export,
    "models": cmd_models,
    "recipes": cmd_recipes,
}

if __name__ == "__main__":
    sys.exit(main())
