"""Generation and accuracy on verifiable tasks (used by `lowtune eval`, the training methods and benchmarks).

The answer rule is the one the rewards use (`lowtune.rewards.extract_answer`): an `<answer>` tag,
`\\boxed{}`, `#### n` or "the answer is n" if present, else the last number in the reply.
"12 + 34 = 46" and "<think>...</think><answer>46</answer>" are both read as 46.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowtune import models
from lowtune.config import Recipe
from lowtune.data import arithmetic, gsm8k, multistep
from lowtune.errors import LowtuneError
from lowtune.results import HeldoutAccuracy
from lowtune.rewards import extract_answer, to_number


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str] | list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    system_prompt: str | None = None,
    num_return_sequences: int = 1,
) -> list[str]:
    """Chat-templated generation for each user prompt (after an optional system message), or each conversation (a
    list of messages, taken as it is); returns the replies, `num_return_sequences` per prompt, a prompt's together."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    replies = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(
                    p if isinstance(p, list) else [*system, {"role": "user", "content": p}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for p in prompts[start : start + batch_size]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with models.folded_lora(model):  # on CPU: the same model in fewer matmuls
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_p=None,
                    top_k=None,
                    num_return_sequences=num_return_sequences,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return replies


@dataclass
class EvalResult:
    accuracy: float
    n: int
    examples: list[tuple[str, str, int]]  # (question, reply, reference)
    replies_with_a_call: int | None = None  # with tools: how many replies called one
    mean_reply_tokens: float = 0.0  # the replies' mean length in tokens (the tokenizer's, no special tokens)


def arithmetic_accuracy(
    model,
    tokenizer,
    n: int = 100,
    digits: int = 2,
    operations: list[str] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 50,
    system_prompt: str | None = None,
    operands: int = 2,
    tools: list | None = None,
) -> EvalResult:
    """Greedy accuracy on the first `n` held-out arithmetic problems (see `accuracy`)."""
    problems = arithmetic.heldout(n, digits, operations, operands)
    return accuracy(model, tokenizer, problems, max_new_tokens, batch_size, system_prompt, tools)


def word_problem_accuracy(model, tokenizer, n: int = 100, digits: int = 3, **kwargs) -> EvalResult:
    """Greedy accuracy on the first `n` held-out word problems (`lowtune.data.arithmetic_text`, never in its
    training stories): "A shop has 875 books and sells 641 of them. How many books are left?" (see `accuracy`)."""
    from lowtune.data.arithmetic_text import word_problems

    return accuracy(model, tokenizer, word_problems(n, digits), **kwargs)


def accuracy(
    model,
    tokenizer,
    problems: list,
    max_new_tokens: int = 32,
    batch_size: int = 50,
    system_prompt: str | None = None,
    tools: list | None = None,
) -> EvalResult:
    """Greedy accuracy on `problems` (each with `question` and integer `answer`); with `tools`, the model may
    call them while answering (`lowtune.toolformer.generate.generate_with_tools`, one problem at a time)."""
    questions = [p.question for p in problems]
    was_training = model.training
    model.eval()
    calls = None
    if tools:
        from lowtune.toolformer.generate import generate_with_tools

        answered = [generate_with_tools(model, tokenizer, q, tools, max_new_tokens, system_prompt=system_prompt)
                    for q in questions]  # fmt: skip
        replies, calls = [r for r, _ in answered], sum(bool(c) for _, c in answered)
    else:
        replies = generate(model, tokenizer, questions, max_new_tokens, batch_size, system_prompt=system_prompt)
    model.train(was_training)
    correct = sum(to_number(extract_answer(r)) == p.answer for p, r in zip(problems, replies, strict=True))
    examples = [(p.question, r, p.answer) for p, r in zip(problems, replies, strict=True)]
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies]
    return EvalResult(correct / len(problems), len(problems), examples, calls, sum(lengths) / len(lengths))


def heldout_problems(
    task: str,
    n: int,
    digits: int = 2,
    operations: list[str] | None = None,
    operands: int = 2,
    steps: int = 3,
    data: str | None = None,
) -> list:
    """The first `n` problems of held-out task `task` (each with `question` and `answer`): `arithmetic` (digits,
    operations, operands), `word_problems` (digits), `multistep` (digits, steps) or `gsm8k` (the rows of file
    `data`)."""
    if task == "arithmetic":
        return arithmetic.heldout(n, digits, operations, operands)
    if task == "word_problems":
        from lowtune.data.arithmetic_text import word_problems

        return word_problems(n, digits)
    if task == "multistep":
        return multistep.heldout(n, digits, steps)
    if task == "gsm8k":
        if not data:
            raise LowtuneError("the gsm8k task scores a file: give GSM8K rows (question, answer ending in '#### n')")
        return gsm8k.problems(data, n)
    raise LowtuneError(f"eval.task {task!r} is unknown; use arithmetic, word_problems, multistep, gsm8k or null")


def heldout_before(model, tokenizer, recipe: Recipe) -> HeldoutAccuracy | None:
    """The held-out score of the model training starts from: the base (the fresh adapter switched off) or, with
    `lora.start_from`, the adapter it trains further."""
    if recipe.lora.start_from:
        return heldout_accuracy(model, tokenizer, recipe, before=True)
    with model.disable_adapter():
        return heldout_accuracy(model, tokenizer, recipe, before=True)


def heldout_accuracy(model, tokenizer, recipe: Recipe, before: bool = False) -> HeldoutAccuracy | None:
    """Greedy accuracy on the recipe's held-out task, or None when `eval.task` is null (or, for the
    score `before` training, when `eval.before` is off). With several processes the main one scores."""
    from lowtune import dist
    from lowtune.tools import load_tool

    cfg = recipe.eval
    if cfg.task is None or (before and not cfg.before) or not dist.is_main():
        return None
    common = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, system_prompt=recipe.system_prompt(),
                  tools=[load_tool(t) for t in cfg.tools])  # fmt: skip
    data = recipe.data
    steps = cfg.steps or (data.steps[0] if isinstance(data.steps, list) else data.steps)  # a mix: its first level
    problems = heldout_problems(cfg.task, cfg.n, cfg.digits or data.digits, cfg.operations or data.operations,
                                cfg.operands or data.operands, steps, cfg.data)  # fmt: skip
    result = accuracy(model, tokenizer, problems, **common)
    return HeldoutAccuracy(
        task=cfg.task, n=result.n, accuracy=result.accuracy, example=result.examples[0][1],
        mean_reply_tokens=round(result.mean_reply_tokens, 2), tools=list(cfg.tools) or None,
        replies_with_a_call=result.replies_with_a_call if cfg.tools else None,
    )  # fmt: skip
