"""Toolformer pieces: the call syntax, the loss weights and keep rule by hand, tool-augmented generation with a
stub model, and the augmentation pipeline end to end on tiny-random."""

import pytest
import torch

from lowtune.toolformer.augment import Augmenter
from lowtune.toolformer.calls import format_call, open_call, parse_calls, strip_calls
from lowtune.toolformer.filter import call_gain, keep_call, loss_weights
from lowtune.toolformer.generate import generate_with_tools
from lowtune.tools import Calculator, Calendar


def test_parse_calls():
    text = "Out of 1400, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed [Calendar()] today."
    calls = parse_calls(text)
    assert [(c.tool, c.arg, c.result) for c in calls] == [("Calculator", "400 / 1400", "0.29"), ("Calendar", "", None)]
    assert text[calls[0].start : calls[0].end] == "[Calculator(400 / 1400) -> 0.29]"
    assert strip_calls(text) == "Out of 1400, 400 (or 29%) passed today."
    assert format_call("Calculator", "2 + 2", "4") == "[Calculator(2 + 2) -> 4]"
    waiting = open_call("so 12 * 24 is [Calculator( 12 * 24 ) -> ")
    assert (waiting.tool, waiting.arg, waiting.result) == ("Calculator", "12 * 24", None)
    assert open_call("[Calculator(1) -> 1] done") is None  # a finished call waits for nothing


@pytest.mark.parametrize(
    "text",
    ["[Calculator(1 + 2", "[Calculator 1 + 2]", "[(1+2) -> 3]", "[Calc(1 [x] 2) -> 3]", "]Calculator(1)[", "[[[[", "",
     "[Calculator((1 + 2)) -> 3]", "[1Calc(2) -> 3]", "[Calculator(1) -> [2]]"],
)  # fmt: skip
def test_malformed_calls_are_plain_text(text):
    assert parse_calls(text) == []
    assert strip_calls(text) == text
    assert open_call(text) is None


def test_loss_weights_and_keep_rule_by_hand():
    # w~ = max(0, 1 - 0.2 t) = 1, .8, .6, .4, .2, 0 ... ; the sum of the first five is 3
    torch.testing.assert_close(loss_weights(7), torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0]) / 3.0)
    # L- = min(L(no call) = 2.0, L(call without result) = 1.8) = 1.8; L+ = 1.2: gain 0.6
    assert call_gain(2.0, 1.8, 1.2) == pytest.approx(0.6) and call_gain(1.5, 1.8, 1.2) == pytest.approx(0.3)
    assert keep_call(2.0, 1.8, 1.2, tau_f=0.5)
    assert not keep_call(2.0, 1.8, 1.2, tau_f=0.7)
    assert not keep_call(1.0, 1.8, 1.2, tau_f=0.0)  # the call does not beat having no call at all


class StubModel(torch.nn.Module):
    """Writes the given segments, one per generate() call, whatever the input: a model that calls a tool.
    It records the text it was given each time."""

    def __init__(self, tokenizer, segments: list[str]):
        super().__init__()
        self.tokenizer, self.segments, self.inputs = tokenizer, list(segments), []

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, max_new_tokens, **kwargs):
        self.inputs.append(self.tokenizer.decode(input_ids[0]))
        segment = self.segments.pop(0) if self.segments else ""
        new = self.tokenizer(segment, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new], dtype=torch.long)], dim=1)


def test_generation_runs_the_tool_and_continues(tiny_path):
    from lowtune import models

    tokenizer = models.load_tokenizer(str(tiny_path))
    stub = StubModel(tokenizer, ["12 * 24 is [Calculator(12 * 24) ->", " so the answer is 288."])
    reply, calls = generate_with_tools(stub, tokenizer, "What is 12 * 24?", [Calculator()])
    assert calls == [{"tool": "Calculator", "arg": "12 * 24", "result": "288", "well_formed": True}]
    assert reply == "12 * 24 is [Calculator(12 * 24) -> 288] so the answer is 288."
    assert stub.inputs[1].endswith("12 * 24 is [Calculator(12 * 24) -> 288]")  # the result was fed back
    stub = StubModel(tokenizer, ["[Unknown(1) ->", " done."])
    reply, calls = generate_with_tools(stub, tokenizer, "hi", [Calculator()])
    assert calls == [{"tool": "Unknown", "arg": "1", "result": None, "well_formed": False}]
    assert reply.startswith("[Unknown(1) ->]")
    stub = StubModel(tokenizer, ["a ->", " b and on."])  # an arrow that is no call: decoding goes on
    reply, calls = generate_with_tools(stub, tokenizer, "hi", [Calculator()])
    assert calls == [] and reply == "a -> b and on."


def test_pipeline_end_to_end_on_tiny_random(tiny_path):
    from transformers import AutoModelForCausalLM

    from lowtune import models

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path)).eval()
    tokenizer = models.load_tokenizer(str(tiny_path))
    import datetime as dt

    augmenter = Augmenter(
        model, tokenizer, [Calculator(), Calendar(dt.date(2023, 1, 30))],
        settings=dict(tau_s=0.0, tau_f=-100.0, top_k=3, samples=2), batch_size=4,
    )  # fmt: skip
    texts = ["Tom buys 12 pens at 3 dollars each and pays 36 dollars.", "The shop opened 5 days ago."]
    results = augmenter.augment(texts)
    stats = augmenter.stats["Calculator"]
    # the calculator's result can only precede a number: 3 numbers in the first text, 1 in the second
    assert stats.texts == 2 and stats.positions == 4
    assert augmenter.stats["Calendar"].positions == 6  # the calendar may stand anywhere: the top 3 of each
    assert stats.sampled >= stats.executed >= stats.kept
    for result in results:
        assert strip_calls(result.annotated) == result.text  # only calls were inserted
        assert len(parse_calls(result.annotated)) == len(result.calls)
    # a calendar call needs no argument the model must invent; with tau_f = -100 executed calls are all kept
    assert augmenter.stats["Calendar"].kept == augmenter.stats["Calendar"].executed


def test_agreement_and_gsm8k_positions():
    from lowtune.data.arithmetic_text import gsm8k_text
    from lowtune.toolformer.augment import agreement, char_to_token

    assert agreement(kept=[5, 20], human=[3, 30, 31]) == (1, 1)  # 5 is within 2 of 3; 20 is near nothing
    text, human = gsm8k_text("Q?", "She makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18")
    assert text == "Q?\nShe makes 9 * 2 = $18 a day.\nThe answer is 18." and text[human[0] :].startswith("18 a day")
    assert char_to_token([0, 3, 7, 10], 7) == 2 and char_to_token([0, 3, 7, 10], 8) == 3


def test_word_problems_are_held_out_from_the_texts():
    from lowtune.data.arithmetic_text import texts, word_problems

    problems = word_problems(500)
    assert len({p.question for p in problems}) > 400 and all(p.answer == eval(p.expression) for p in problems)  # noqa: S307
    numbers = {tuple(p.expression.split()[::2]) for p in problems}
    for story in texts(300, seed=1):
        found = [w for w in story.replace(",", " ").replace(".", " ").split() if w.isdigit()]
        assert tuple(found[:2]) not in numbers or len(found) < 2


def test_augment_and_generate_cli(tmp_path, tiny_path, capsys):
    import json

    from lowtune.cli import main

    out = tmp_path / "aug.jsonl"
    args = ["augment", "tiny-random", "--n", "2", "--top-k", "2", "--samples", "2", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(strip_calls(r["annotated"]) == r["text"] for r in rows)
    assert "positions sampled" in capsys.readouterr().out
    assert main(args) == 2 and "never overwrites" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"question": 1}\n')
    assert main(["augment", "tiny-random", "--data", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().out
    assert main(["augment", "tiny-random", "--tools", "calculater", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "did you mean calculator" in capsys.readouterr().out
    assert (
        main(
            ["generate", "tiny-random", "--prompt", "What is 2 + 2?", "--tools", "calculator", "--max-new-tokens", "4"]
        )
        == 0
    )
    assert "assistant:" in capsys.readouterr().out


def test_calculator_positions_are_number_starts(tiny_path):
    from lowtune import models
    from lowtune.toolformer.augment import candidate_positions

    tokenizer = models.load_tokenizer(str(tiny_path))
    text = "Tom bought 26 packs of $530 each, 13,780 in all (1.5x)."
    enc = tokenizer(" " + text, return_offsets_mapping=True, add_special_tokens=False)
    starts = [max(a - 1, 0) for a, _ in enc["offset_mapping"]]
    found = candidate_positions(Calculator(), text, starts)
    # one position per number, the token holding its first character (never inside a number)
    first_chars = sorted(text[starts[i] :].lstrip()[:1] for i in found)
    assert first_chars == ["$", "1", "1", "2"], [text[starts[i] :] for i in sorted(found)]
    assert candidate_positions(Calendar(), text, starts) is None  # no restriction


def spread_model(tiny_path):
    """tiny-random with larger random weights, so what it predicts depends on the prefix (tiny-random's own
    write "((((((" after any prefix)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    return model


def naive_weighted_loss(model, tokenizer, prefix: str, text: str, i: int) -> float:
    """The paper's L_i(z) from the full vocabulary's logits of one unpadded sequence z + x:
    -sum_j w_(j-i) log softmax(logits)[x_j], w_t = max(0, 1 - 0.2 t) / 3 (the first five sum to 3)."""
    z = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    x = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([z + x])).logits[0].float(), dim=-1)
    weights = [1.0, 0.8, 0.6, 0.4, 0.2]
    # the logits at sequence position len(z) + j - 1 predict text token j
    return -sum(w / 3 * logp[len(z) + i + t - 1, x[i + t]].item() for t, w in enumerate(weights) if i + t < len(x))


def test_gains_and_the_filter_match_a_full_softmax_reference(tiny_path):
    """The pipeline's losses, gains and kept calls against the paper's formulas computed naively, at the
    calculator's tau_f = 0.5: some calls are kept and some dropped, and the best kept call per position wins."""
    from lowtune import models
    from lowtune.toolformer.augment import candidate_positions
    from lowtune.tools import calculator

    model, tokenizer = spread_model(tiny_path), models.load_tokenizer(str(tiny_path))
    text = "Tom buys 12 pens at 3 dollars each and pays 36 dollars."
    augmenter = Augmenter(model, tokenizer, [Calculator()], batch_size=4)  # batches of mixed lengths, padded
    assert augmenter.settings["Calculator"]["tau_f"] == 0.5  # the paper's
    tokens = augmenter._text_tokens(text)
    _, at_3, at_36 = sorted(candidate_positions(Calculator(), text, tokens[1]))
    # calls built from the numbers said before each position (the calculator's `usable`)
    calls = [(at_3, a) for a in ("12 * 12", "12 + 12", "12 / 12", "12 - 12")]
    calls += [(at_36, a) for a in ("12 * 3", "3 * 12", "12 + 3", "12 - 3", "12 / 3", "3 + 3", "3 - 12")]
    augmenter.positions = lambda *args: [at_3, at_36]
    augmenter.sample_calls = lambda *args: calls

    want = {}
    for i, arg in calls:
        z_none, z_call, z_result = "", format_call("Calculator", arg), format_call("Calculator", arg, calculator(arg))
        want[i, arg] = tuple(naive_weighted_loss(model, tokenizer, z, text, i) for z in (z_none, z_call, z_result))
    executed = [(i, arg, calculator(arg)) for i, arg in calls]
    got = augmenter.call_losses(Calculator(), text, tokens, executed)
    for (i, arg, _), losses in zip(executed, got, strict=True):
        assert losses == pytest.approx(want[i, arg], abs=1e-4), (arg, losses, want[i, arg])

    gains = {call: min(none, no_result) - with_result for call, (none, no_result, with_result) in want.items()}
    kept = {call: gain for call, gain in gains.items() if gain >= 0.5}
    assert 0 < len(kept) < len(calls)  # the filter decides something
    assert any(no_result < none for none, no_result, _ in want.values())  # L- is not always L(no call)
    result = augmenter.augment_one(text)
    stats = augmenter.stats["Calculator"]
    assert stats.executed == len(calls) and stats.kept == len(kept)
    best = {}
    for (i, arg), gain in kept.items():
        if i not in best or gain > best[i][1]:
            best[i] = (arg, gain)
    assert [(c["position"], c["arg"]) for c in result.calls] == [(i, best[i][0]) for i in sorted(best)]
    for call in result.calls:
        assert call["gain"] == pytest.approx(best[call["position"]][1], abs=1e-3)
        assert call["result"] == calculator(call["arg"])
    assert strip_calls(result.annotated) == text and len(parse_calls(result.annotated)) == len(best)


def test_cached_sampling_equals_greedy_generation_at_low_temperature(tiny_path):
    """Augmenter._sample reads each prefix once and repeats its cache; at a temperature near 0 it must give
    what generate() gives greedily, for prefixes of different lengths (left padding)."""
    from lowtune import models

    model = spread_model(tiny_path)
    tokenizer = models.load_tokenizer(str(tiny_path))
    augmenter = Augmenter(model, tokenizer, [Calculator()], max_arg_tokens=8, temperature=1e-6)
    prefixes = ["Tom bought 26 packs of [Calculator(", "A [Calculator("]
    sampled = augmenter._sample(prefixes, samples=2)
    assert len(sampled) == 4 and sampled[0] == sampled[1] and sampled[2] == sampled[3]
    assert sampled[0] and sampled[2] and sampled[0] != sampled[2]  # the continuations depend on the prefix
    for k, prefix in enumerate(prefixes):
        ids = tokenizer(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        greedy = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        # _sample stops a row at the first ")", "]" or newline; generate() runs the full 6 tokens
        assert greedy.startswith(sampled[2 * k]), (greedy, sampled[2 * k])
