"""The chat format of a tokenizer, and the Ollama Modelfile that reproduces it.

`chat_format(tokenizer)` renders a few conversations with the tokenizer's own chat template and
recognizes its family — ChatML (`<|im_start|>role\\n…<|im_end|>\\n`) or Llama-3
(`<|start_header_id|>role<|end_header_id|>\\n\\n…<|eot_id|>`) — including the two ways templates add
to the system turn: a default system prompt when the conversation has none (SmolLM2, Qwen2.5) and a
prefix before every system prompt (Llama-3.1/3.2: "Cutting Knowledge Date: …"). The Modelfile's
TEMPLATE is Go text/template (what Ollama runs) and renders the same text as
`tokenizer.apply_chat_template`, without the BOS text a template writes itself (llama.cpp and Ollama
add BOS from the GGUF's add_bos_token). A template of no known family gets no TEMPLATE line: Ollama
then uses the chat template stored in the GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lowtune.errors import LowtuneError
from lowtune.models import end_of_turn_token


@dataclass(frozen=True)
class Family:
    name: str
    start: str  # before the role
    middle: str  # between role and content
    end: str  # after the content (the end-of-turn token and what follows it)
    bos_text: str  # what the template writes before the first turn

    def turn(self, role: str, content: str) -> str:
        return f"{self.start}{role}{self.middle}{content}{self.end}"

    def generation_prompt(self) -> str:
        return f"{self.start}assistant{self.middle}"


FAMILIES = (
    Family("chatml", "<|im_start|>", "\n", "<|im_end|>\n", ""),
    Family("llama3", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", "<|begin_of_text|>"),
)


@dataclass(frozen=True)
class ChatFormat:
    template: str  # the Jinja chat template as the tokenizer has it
    eot: str  # the end-of-turn token: the GGUF's eos, where generation stops
    stop: list[str]
    family: Family | None = None
    system_prefix: str = ""  # written before every system prompt
    default_system: str | None = None  # the system prompt used when a conversation has none


# Conversations the family must render exactly: 1, 2, 3 and 4 messages, with and without a system turn.
PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "Q1"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ],
]


def chat_format(tokenizer, where: str | Path) -> ChatFormat:
    """The tokenizer's chat template, end-of-turn and stop tokens, and its family if lowtune knows it."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise LowtuneError(
            f"{where} has no chat template; GGUF export needs one (chat_template.jinja or "
            "tokenizer_config.json chat_template) so runtimes format prompts and stop correctly"
        )
    eot = end_of_turn_token(tokenizer)
    if not eot:
        raise LowtuneError(f"{where}: the tokenizer has no eos token and the chat template no known end-of-turn")
    stop = [eot] + ([tokenizer.eos_token] if tokenizer.eos_token and tokenizer.eos_token != eot else [])
    for family in FAMILIES:
        found = _match(tokenizer, family)
        if found is not None:
            return ChatFormat(template, eot, stop, family, *found)
    return ChatFormat(template, eot, stop)


def render(fmt: ChatFormat, messages: list[dict]) -> str:
    """What the family renders for `messages` with a generation prompt (the BOS text included)."""
    family = fmt.family
    text = family.bos_text
    if messages[0]["role"] != "system" and fmt.default_system is not None:
        text += family.turn("system", fmt.system_prefix + fmt.default_system)
    for m in messages:
        prefix = fmt.system_prefix if m["role"] == "system" else ""
        text += family.turn(m["role"], prefix + m["content"])
    return text + family.generation_prompt()


def _match(tokenizer, family: Family) -> tuple[str, str | None] | None:
    """(system prefix, default system) with which `family` renders every probe conversation, or None."""

    def apply(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    try:
        with_system, without = apply(PROBE_CONVERSATIONS[1]), apply(PROBE_CONVERSATIONS[0])
    except Exception:  # a template that cannot render these messages belongs to no family we know
        return None
    system_head = family.bos_text + family.start + "system" + family.middle

    def system_content(text: str) -> str | None:
        return text[len(system_head) :].partition(family.end)[0] if text.startswith(system_head) else None

    content = system_content(with_system)  # the system turn for system prompt "S": prefix + "S"
    if content is None or not content.endswith("S"):
        return None
    prefix, default = content[:-1], None
    if without != family.bos_text + family.turn("user", "Q1") + family.generation_prompt():
        content = system_content(without)  # no system prompt given: prefix + the default
        if content is None or not content.startswith(prefix):
            return None
        default = content[len(prefix) :]
    probe = ChatFormat("", "", [], family, prefix, default)
    try:
        if all(apply(m) == render(probe, m) for m in PROBE_CONVERSATIONS):
            return prefix, default
    except Exception:
        return None
    return None


def ollama_template(fmt: ChatFormat) -> str:
    """The Go text/template Ollama renders .Messages with (no BOS text: the runtime adds BOS)."""
    family = fmt.family

    def go(text: str) -> str:  # literal text inside a Go template: only "{{" needs escaping
        return text.replace("{{", '{{ "{{" }}')

    out = ""
    if fmt.default_system is not None:
        out += '{{- if ne (index .Messages 0).Role "system" }}'
        out += go(family.turn("system", fmt.system_prefix + fmt.default_system)) + "{{ end }}"
    out += "{{- range .Messages }}" + go(family.start) + "{{ .Role }}" + go(family.middle)
    if fmt.system_prefix:
        out += '{{ if eq .Role "system" }}' + go(fmt.system_prefix) + "{{ end }}"
    out += "{{ .Content }}" + go(family.end) + "{{ end }}" + go(family.generation_prompt())
    return out


def modelfile_text(gguf_name: str, fmt: ChatFormat) -> str:
    lines = [f"# Ollama Modelfile written by lowtune: ollama create NAME -f {Path(gguf_name).stem}.Modelfile"]
    lines.append(f"FROM ./{gguf_name}")
    if fmt.family is not None:
        lines.append(f'TEMPLATE """{ollama_template(fmt)}"""')
    else:
        lines.append(
            "# No TEMPLATE: the chat template is of no family lowtune knows (ChatML, Llama-3), so Ollama uses the "
            "one it recognizes from the GGUF's tokenizer.chat_template; check it with `ollama show --template NAME`."
        )
    lines += [f'PARAMETER stop "{token}"' for token in fmt.stop]
    return "\n".join(lines) + "\n"
