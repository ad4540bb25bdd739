"""Toolformer's calls in the ecosystem's tool-calling format: the rows `--format tool_calls` writes, TRL's SFT on
them, the ChatML template with tools, and generation through the model's native calls (a scripted model answers
held-out word problems through the parse -> run -> feed back -> continue loop), malformed calls included."""

import json
import re

import pytest
import torch

from lowtune import models
from lowtune.builtin import CHATML_TEMPLATE
from lowtune.toolformer.augment import Augmented, write_results
from lowtune.toolformer.generate import generate_with_tools
from lowtune.toolformer.tool_calls import (
    CHATML_TOOLS_TEMPLATE,
    supports_tool_calls,
    tool_call_row,
    tool_schema,
)
from lowtune.tools import Calculator, Calendar, calculator

STORY = "Ken bought 16 packs of 986 shells, which makes [Calculator(16 * 986) -> 15776] 15776 shells."
QUESTION = "Ken buys 16 packs of 986 shells. How many shells is that?"
EXCHANGE = (  # how the ChatML template with tools renders the call, the result and the continuation, in place
    "<|im_start|>assistant\nKen bought 16 packs of 986 shells, which makes\n<tool_call>\n"
    '{"name": "calculator", "arguments": {"expression": "16 * 986"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n15776\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n15776 shells.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tool_tokenizer(tiny_path):
    """tiny-random's ChatML tokenizer with lowtune's ChatML template with tools (Qwen2.5's syntax)."""
    tokenizer = models.load_tokenizer(str(tiny_path))
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    return tokenizer


def test_a_kept_call_becomes_a_tool_call_turn_a_tool_message_and_the_continuation():
    from transformers.utils import get_json_schema

    row = tool_call_row(STORY, [Calculator()], [{"role": "user", "content": QUESTION}])
    call = {"id": "call_0", "type": "function",
            "function": {"name": "calculator", "arguments": {"expression": "16 * 986"}}}  # fmt: skip
    assert row["messages"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Ken bought 16 packs of 986 shells, which makes", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "15776"},
        {"role": "assistant", "content": "15776 shells."},
    ]
    assert json.loads(row["tools"]) == [get_json_schema(calculator)] == [tool_schema(Calculator())]
    # two calls, one at the very start; a tool the row does not offer and a call without a result drop out
    row = tool_call_row(
        "[Calculator(1 + 2) -> 3] 3 apples, [Calendar()] then [Calculator(3 * 2) -> 6] 6.", [Calculator()]
    )
    assert [(m["role"], m["content"]) for m in row["messages"]] == [
        ("assistant", ""), ("tool", "3"), ("assistant", "3 apples, then"), ("tool", "6"), ("assistant", "6."),
    ]  # fmt: skip
    assert [m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"] == ["call_0", "call_1"]
    calendar = json.loads(tool_call_row("x", [Calendar()])["tools"])[0]["function"]  # a tool without a function
    assert calendar["name"] == "Calendar" and list(calendar["parameters"]["properties"]) == ["input"]


def test_only_a_template_that_renders_tools_calls_and_results_supports_tool_calls(tool_tokenizer, tiny_path):
    assert supports_tool_calls(tool_tokenizer)
    plain = models.load_tokenizer(str(tiny_path))
    assert plain.chat_template == CHATML_TEMPLATE and not supports_tool_calls(plain)
    # names `tools` but drops the tool message: not enough
    plain.chat_template = CHATML_TOOLS_TEMPLATE.replace("+ message.content + '\\n</tool_response>'", "+ '</x>'")
    assert "tools" in plain.chat_template and not supports_tool_calls(plain)


def _trainer(tiny_path, tokenizer, dataset, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, report_to=[], use_cpu=True, max_length=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_trl_prepares_the_rows_with_the_call_and_the_result_in_place(tool_tokenizer, tiny_path, tmp_path):
    from datasets import Dataset, load_dataset

    from lowtune import data
    from lowtune.config import DataConfig

    path = tmp_path / "calls.jsonl"
    prompt = [{"role": "user", "content": QUESTION}]
    rows = [tool_call_row(STORY, [Calculator()], prompt), tool_call_row("No call here: 7.", [Calculator()], prompt)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # TRL's own language-modeling path, on the file as `datasets` reads it
    trainer = _trainer(tiny_path, tool_tokenizer, load_dataset("json", data_files=str(path), split="train"), tmp_path)
    text = tool_tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou can call these tools:\n<tools>\n{") and '"calculator"' in text
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n{EXCHANGE}")

    # lowtune's loader: prompt/completion, the loss on the whole exchange after the question
    records = data.load(DataConfig(source=str(path)))
    assert [m["role"] for m in records[0]["completion"]] == ["assistant", "tool", "assistant"]
    assert [(m["role"], m["content"]) for m in records[1]["completion"]] == [("assistant", "No call here: 7.")]
    trainer = _trainer(tiny_path, tool_tokenizer, Dataset.from_list(list(records)), tmp_path)
    example = trainer.train_dataset[0]
    completion = [t for t in example["labels"] if t != -100]  # the tokens the loss covers
    assert tool_tokenizer.decode(completion) == EXCHANGE.removeprefix("<|im_start|>assistant\n")


def test_a_tool_call_row_with_a_bad_call_names_its_line_and_field(tmp_path):
    from lowtune import data
    from lowtune.config import DataConfig
    from lowtune.errors import LowtuneError

    good = tool_call_row(STORY, [Calculator()], [{"role": "user", "content": QUESTION}])
    nameless = json.loads(json.dumps(good))
    del nameless["messages"][1]["tool_calls"][0]["function"]["name"]
    no_question = tool_call_row(STORY, [Calculator()])
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, nameless, no_question)))
    with pytest.raises(LowtuneError) as e:
        data.load(DataConfig(source=str(path)))
    assert "bad.jsonl:2: field 'messages[1].tool_calls[0].function.name' is missing" in str(e.value)
    assert "bad.jsonl:3: field 'messages' needs a user turn before the assistant's tool calls" in str(e.value)


class ScriptedModel(torch.nn.Module):
    """Answers word problems as a model that learned tool calls would, reading only what it is given: asked a
    question it calls the calculator (natively when the prompt lists tools, else inline), and given the result
    it says it. `replies` replaces the first reply (a malformed call, say). It records its inputs."""

    def __init__(self, tokenizer, expressions: dict[str, str], replies: list[str] | None = None):
        super().__init__()
        self.tokenizer, self.expressions, self.replies, self.inputs = tokenizer, expressions, list(replies or []), []

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, max_new_tokens, **kwargs):
        text = self.tokenizer.decode(input_ids[0])
        self.inputs.append(text)
        result = re.search(r"<tool_response>\n(.*)\n</tool_response><\|im_end\|>\n<\|im_start\|>assistant\n$", text)
        inline = re.search(r"-> (\S+)\]$", text)
        if self.replies:
            reply = self.replies.pop(0)
        elif result or inline:
            reply = f" The answer is {(result or inline).group(1)}.<|im_end|>"
        else:
            question = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text)[-1]
            expression = self.expressions[question]
            if "<tools>" in text:
                call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
                reply = f"Let me compute.\n<tool_call>\n{call}\n</tool_call>"
            else:
                reply = f"Let me compute [Calculator({expression}) ->"
        new = self.tokenizer(reply, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new], dtype=torch.long)], dim=1)


# transformers' response template for the syntax of CHATML_TOOLS_TEMPLATE (`tokenizer.parse_response`)
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}  # fmt: skip


@pytest.mark.parametrize("template", ["tools", "tools+response_template", "plain"])
def test_heldout_word_problems_are_answered_through_the_tool(template, tool_tokenizer, tiny_path):
    import copy

    from lowtune.data.arithmetic_text import word_problems
    from lowtune.evaluate import accuracy

    tokenizer = copy.deepcopy(tool_tokenizer) if template != "plain" else models.load_tokenizer(str(tiny_path))
    tokenizer.response_template = RESPONSE_TEMPLATE if template == "tools+response_template" else None
    problems = word_problems(6)
    model = ScriptedModel(tokenizer, {p.question: p.expression for p in problems})
    result = accuracy(model, tokenizer, problems, max_new_tokens=256, tools=[Calculator()])
    assert result.accuracy == 1.0 and result.replies_with_a_call == 6
    reply = result.examples[0][1]
    if template == "plain":  # inline calls: the call and its result are in the reply
        assert reply == f"Let me compute [Calculator({problems[0].expression}) -> {problems[0].answer}] " \
                        f"The answer is {problems[0].answer}."  # fmt: skip
        return
    assert reply == f"Let me compute. The answer is {problems[0].answer}."
    # the second generation saw the call as the assistant's turn and the result as the tool's
    call = json.dumps({"name": "calculator", "arguments": {"expression": problems[-1].expression}})
    assert model.inputs[-1].endswith(
        f"Let me compute.\n<tool_call>\n{call}\n</tool_call><|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\n{problems[-1].answer}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("response_template", [None, RESPONSE_TEMPLATE])
@pytest.mark.parametrize(
    "bad",
    [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}\n</tool_call>',  # bad JSON
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>',  # unknown tool
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2", "n": 3}}\n</tool_call>',  # extra arg
        '<tool_call>\n{"arguments": {"expression": "1 + 2"}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}}',  # never closed
    ],
)
def test_a_malformed_native_call_ends_the_reply_and_is_not_well_formed(bad, response_template, tool_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tool_tokenizer)
    tokenizer.response_template = response_template
    model = ScriptedModel(tokenizer, {}, replies=[f"I will compute. {bad}"])
    reply, calls = generate_with_tools(model, tokenizer, "What is 1 + 2?", [Calculator()], max_new_tokens=256)
    if response_template and not bad.endswith("</tool_call>"):  # this response template closes a call at the end
        assert calls[0]["well_formed"] and calls[0]["result"] == "3"
        return
    assert len(calls) == 1 and calls[0]["well_formed"] is False and calls[0]["result"] is None
    assert reply == f"I will compute. {bad}" and len(model.inputs) == 1  # nothing was run, nothing continued


def test_a_well_formed_call_without_a_result_is_answered_with_an_error(tool_tokenizer):
    call = json.dumps({"name": "calculator", "arguments": {"expression": "two plus two"}})
    model = ScriptedModel(tool_tokenizer, {}, replies=[f"<tool_call>\n{call}\n</tool_call>"])
    reply, calls = generate_with_tools(model, tool_tokenizer, "What is two plus two?", [Calculator()], 256)
    assert calls == [{"tool": "calculator", "arg": "two plus two", "result": None, "well_formed": True}]
    assert reply == "The answer is error: calculator gave no result."


def test_augment_writes_tool_call_rows_and_refuses_an_unknown_format(tmp_path, capsys):
    from lowtune.cli import main

    out = tmp_path / "calls.jsonl"
    assert main(["augment", "tiny-random", "--format", "toolcalls", "--out", str(out)]) == 2
    assert "--format toolcalls: choose one of inline, tool_calls — did you mean tool_calls?" in capsys.readouterr().out
    assert not out.exists()
    write_results(out, [Augmented("16 * 986 = 15776.", "16 * 986 = [Calculator(16 * 986) -> 15776] 15776.")],
                  "tool_calls", [Calculator()])  # fmt: skip
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row) == ["messages", "tools"] and [m["role"] for m in row["messages"]] == [
        "assistant",
        "tool",
        "assistant",
    ]


def test_a_recipe_with_augment_format_tool_calls_trains_native_calls(tmp_path, monkeypatch, capsys):
    """SFT on Toolformer's kept calls as native calls: tiny-random's plain ChatML template is replaced by the one
    with tools, the adapter's tokenizer keeps it, and the held-out problems are answered with native calls."""
    from lowtune import recipes
    from lowtune.config import load_recipe
    from lowtune.errors import LowtuneError
    from lowtune.toolformer.augment import Augmenter

    def annotate(self, text):  # the call a good annotator keeps: before the result, from the story's numbers
        a, b, r = re.findall(r"\d+", text)[:2] + re.findall(r"\d+", text)[-1:]
        op = next(op for op in "+-*/" if calculator(f"{a} {op} {b}") == r)
        call = f"[Calculator({a} {op} {b}) -> {r}]"
        return Augmented(text, text[: text.rindex(r)] + f"{call} " + text[text.rindex(r) :], [{"tool": "Calculator"}])

    monkeypatch.setattr(Augmenter, "augment_one", annotate)
    overrides = ["model.name=tiny-random", "data.source=arithmetic-text", "data.n_train=4", "data.digits=3",
                 "augment.tools=[calculator]", "augment.format=tool_calls", "train.max_steps=1",
                 "train.per_device_train_batch_size=2", "eval.task=word_problems", "eval.n=2",
                 "eval.tools=[calculator]", "eval.max_new_tokens=8", f"output.dir={tmp_path}",
                 "output.quiet=true"]  # fmt: skip
    run, summary = recipes.train(load_recipe(None, overrides))
    assert summary["augmentation"]["rows_with_calls"] == 4 and summary["eval_after"]["tools"] == ["calculator"]
    assert "lowtune's ChatML template with tools is set" in capsys.readouterr().out
    assert models.load_tokenizer(str(run.path / "adapter")).chat_template == CHATML_TOOLS_TEMPLATE
    with pytest.raises(LowtuneError, match=r"augment.format is 'toolcalls'; choose one of inline, tool_calls"):
        load_recipe(None, ["augment.format=toolcalls"])
