"""Tool calls in the ecosystem's format: what chat templates render and TRL's SFTTrainer trains on.

A conversation with a tool call is a list of messages (transformers' chat format, TRL's tool-calling
dataset format): the assistant's turn carries `tool_calls` ({"id", "type": "function", "function":
{"name", "arguments": {...}}}), a `tool` message carries the result (with the call's `tool_call_id` and
the tool's `name`), and the assistant goes on in a new turn. A row's `tools` column is the tools' JSON
schemas (transformers' `get_json_schema` of a documented function), stored as JSON text, which TRL reads.

- `tool_schema(tool)`: a tool's JSON schema; `call_input` turns a call's arguments back into the tool's input.
- `tool_call_row`: Toolformer's annotated text (`[Calculator(12 + 30) -> 42]` inline) as such a row.
- `CHATML_TOOLS_TEMPLATE`: a ChatML chat template with tools in the Qwen2.5 / Hermes syntax (tools listed
  in `<tools>`, a call written `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, a result read
  back inside `<tool_response>` in a user turn), for ChatML models whose own template has no tools.
- `supports_tool_calls(tokenizer)`: whether a tokenizer's chat template renders tools, calls and results;
  `ensure_tool_template` gives a ChatML tokenizer without them `CHATML_TOOLS_TEMPLATE`.
- `parse_reply`: the text and the calls of a reply, by the tokenizer's `response_template` when it has one
  (transformers' `parse_response`), else in the Qwen2.5 / Hermes syntax.
"""

from __future__ import annotations

import json
from typing import Any

from lowtune.errors import LowtuneError
from lowtune.toolformer.calls import parse_calls

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

# Written for lowtune; the syntax (not the wording) is Qwen2.5's, so Qwen2.5 and Hermes-style models read it.
CHATML_TOOLS_TEMPLATE = (
    "{%- set rest = messages %}{%- set system = none %}"
    "{%- if messages and messages[0].role == 'system' %}"
    "{%- set system = messages[0].content %}{%- set rest = messages[1:] %}{%- endif %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}{%- if system %}{{- system + '\\n\\n' }}{%- endif %}"
    "{{- 'You can call these tools:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    '{{- \'\\n</tools>\\nTo call one, write <tool_call>\\n{"name": <tool name>, "arguments": <JSON object>}'
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif system %}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in rest %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "{%- for call in message.tool_calls %}"
    "{%- set f = call.function if call.function is defined else call %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' }}"
    "{{- f.arguments if f.arguments is string else (f.arguments | tojson) }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tool_schema(tool) -> dict:
    """The tool's JSON schema, as chat templates take it: transformers' `get_json_schema` of the documented
    function the tool offers as `function` (the calculator's: `calculator(expression)`; at most one parameter,
    as a tool takes one string), else one string parameter `input` described by the tool's own description."""
    function = getattr(tool, "function", None)
    if function is not None:
        from transformers.utils import get_json_schema

        schema = get_json_schema(function)
        if len(schema["function"].get("parameters", {}).get("properties", {})) > 1:
            raise LowtuneError(f"tool {tool.name}: its function takes several parameters; a tool takes one string")
        return schema
    parameters = {"input": {"type": "string", "description": f"the input, as in {tool.name}(input)"}}
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": {"type": "object", "properties": parameters}}}  # fmt: skip


def schema_name(schema: dict) -> str:
    return schema["function"]["name"]


def call_input(schema: dict, arguments: Any) -> str | None:
    """The string a tool's `__call__` takes, from a call's `arguments` (a dict, or its JSON text): the value of
    its parameter, "" when the call leaves it out; None when the arguments do not fit the schema (not a JSON
    object, a name it does not have, a required one missing, a value that is not text or a number)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    params = schema["function"].get("parameters", {})
    if not isinstance(arguments, dict) or set(arguments) - set(params.get("properties", {})):
        return None
    if any(n not in arguments for n in params.get("required", [])):
        return None
    value = next(iter(arguments.values()), "")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


def call_arguments(schema: dict, arg: str) -> dict:
    """A call's `arguments` for the tool input `arg` (the inverse of `call_input`)."""
    names = list(schema["function"].get("parameters", {}).get("properties", {}))
    return {names[0]: arg} if names and arg else {}


def tool_call_row(annotated: str, tools: list, prompt: list[dict] | None = None) -> dict:
    """A conversation in TRL's tool-calling format for Toolformer's annotated text, with the `prompt` messages
    (if any) first: each kept call `[Tool(arg) -> result]` becomes an assistant turn holding the text before
    it and the call, then a `tool` message with the result; the text after the last call is the assistant's
    last turn. A call without a result, or of a tool not in `tools`, is dropped (the text around it stays).

    Returns {"messages": [...], "tools": the tools' JSON schemas as JSON text}."""
    schemas = {t.name.lower(): tool_schema(t) for t in tools}
    messages, text, last = list(prompt or []), "", 0
    for call in parse_calls(annotated):
        text += annotated[last : call.start]
        last = call.end
        schema = schemas.get(call.tool.lower())
        if schema is None or call.result is None:
            text = text.rstrip(" ")  # the call goes with the space before it, as `strip_calls` removes it
            continue
        call_id = f"call_{sum(m['role'] == 'tool' for m in messages)}"
        function = {"name": schema_name(schema), "arguments": call_arguments(schema, call.arg)}
        messages += [
            {"role": "assistant", "content": text.strip(),
             "tool_calls": [{"id": call_id, "type": "function", "function": function}]},
            {"role": "tool", "tool_call_id": call_id, "name": schema_name(schema), "content": call.result},
        ]  # fmt: skip
        text = ""
    messages.append({"role": "assistant", "content": (text + annotated[last:]).strip()})
    return {"messages": messages, "tools": json.dumps(list(schemas.values()))}


# A probe conversation: every part of a tool exchange carries a sentinel the rendering must keep.
_PROBE = {"name": "probe_tool_7f3a", "description": "probe_description_2c9e", "key": "probe_key_5b1d",
          "value": "probe_value_8e4f", "result": "probe_result_1a6c"}  # fmt: skip


def supports_tool_calls(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders all of a tool exchange: the tools' schemas, the assistant's
    call (name and arguments) and the tool's result. Templates without tools drop one of them (a plain ChatML
    template renders `content` only) or fail on the `tool` role."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    p = _PROBE
    schema = {"type": "function", "function": {"name": p["name"], "description": p["description"],
              "parameters": {"type": "object", "properties": {p["key"]: {"type": "string"}}}}}  # fmt: skip
    call = {"id": "call_0", "type": "function", "function": {"name": p["name"], "arguments": {p["key"]: p["value"]}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "name": p["name"], "content": p["result"]},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[schema], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render the exchange does not support it
        return False
    return all(isinstance(text, str) and s in text for s in p.values())


def parse_reply(tokenizer, reply: str, prefix: str) -> tuple[str, list[dict]]:
    """(the reply's text, its calls) for a reply generated after the rendered `prefix`. A call is {"name",
    "arguments"}; one that cannot be read (bad JSON, not closed, no name) is {"name": None, "arguments": None,
    "raw": its text}. The tokenizer's `response_template` parses when it has one, else the Qwen2.5 / Hermes
    syntax: text, then `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks."""
    if getattr(tokenizer, "response_template", None) is not None:
        try:
            message = tokenizer.parse_response(reply, prefix=prefix)
        except ValueError:
            return reply.partition(CALL_OPEN)[0].strip(), [{"name": None, "arguments": None, "raw": reply}]
        calls = [c.get("function", c) for c in message.get("tool_calls") or []]
        calls = [_checked(c.get("name"), c.get("arguments", {}), json.dumps(c)) for c in calls]
        return (message.get("content") or "").strip(), calls
    content, *blocks = reply.split(CALL_OPEN)
    calls = []
    for block in blocks:
        body, closed, _ = block.partition(CALL_CLOSE)
        try:
            found = json.loads(body) if closed else None
        except ValueError:
            found = None
        found = found if isinstance(found, dict) else {}
        calls.append(_checked(found.get("name"), found.get("arguments", {}), CALL_OPEN + block))
    return content.strip(), calls


def _checked(name, arguments, raw: str) -> dict:
    if not isinstance(name, str) or not isinstance(arguments, (dict, str)):
        return {"name": None, "arguments": None, "raw": raw}
    return {"name": name, "arguments": arguments}


def ensure_tool_template(tokenizer) -> bool:
    """Make the tokenizer's chat template render tool calls: one that does is kept (False); a ChatML tokenizer
    (<|im_start|> ... <|im_end|>) gets `CHATML_TOOLS_TEMPLATE` (True); any other is refused."""
    if supports_tool_calls(tokenizer):
        return False
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" not in vocab or "<|im_end|>" not in vocab:
        raise LowtuneError(
            "the data has tool calls, and the model's chat template renders none (and is not ChatML, which lowtune "
            "has a template with tools for): use a model whose template has tools, or augment.format: inline"
        )
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    return True
