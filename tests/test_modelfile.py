"""The Modelfile's TEMPLATE, rendered by Go's text/template (what Ollama runs), equals apply_chat_template."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CHATML_WITH_DEFAULT_SYSTEM, LLAMA3_TEMPLATE, LLAMA32_TEMPLATE

from lowtune.export.modelfile import chat_format, modelfile_text, ollama_template

CONVERSATIONS = {
    "1 message": [{"role": "user", "content": "What is 2 + 3?"}],
    "3 messages, no system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say {{ .Role }} twice."},
    ],
    "3 messages, system": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ],
    "4 messages, system": [
        {"role": "system", "content": "You count."},
        {"role": "user", "content": "1, 2"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "next?\n\nthanks"},
    ],
    "4 messages, no system": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
}
KINDS = {
    "chatml": ("gpt-2", "chatml", None),
    "chatml with a default system": ("smollm", "chatml", CHATML_WITH_DEFAULT_SYSTEM),
    "llama-3": ("llama-bpe", "llama3", LLAMA3_TEMPLATE),
    "llama-3.2 (system preamble)": ("llama-bpe", "llama3", LLAMA32_TEMPLATE),
}


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): Ollama's template engine is Go's text/template")
    binary = tmp_path_factory.mktemp("go") / "render"
    source = Path(__file__).parent / "data" / "render_ollama_template.go"
    subprocess.run(["go", "build", "-o", str(binary), str(source)], check=True, capture_output=True)

    def render(template: str, messages: list[dict]) -> str:
        data = json.dumps({"template": template, "messages": messages})
        return subprocess.run([str(binary)], input=data, capture_output=True, text=True, check=True).stdout

    return render


@pytest.mark.parametrize("kind", KINDS)
def test_the_ollama_template_renders_what_the_chat_template_renders(kind, go_renderer, bpe_tokenizer):
    pre, family, template = KINDS[kind]
    tokenizer = bpe_tokenizer(pre, family, template)
    fmt = chat_format(tokenizer, kind)
    assert fmt.family is not None and fmt.family.name == family
    go_template = ollama_template(fmt)
    for name, messages in CONVERSATIONS.items():
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template's own BOS text is left to the runtime, which adds BOS per the GGUF's add_bos_token.
        assert expected.startswith(fmt.family.bos_text)
        assert go_renderer(go_template, messages) == expected.removeprefix(fmt.family.bos_text), name


def test_the_default_system_and_the_preamble_are_found(bpe_tokenizer):
    smol = chat_format(bpe_tokenizer("smollm", "chatml", CHATML_WITH_DEFAULT_SYSTEM), "x")
    assert (smol.system_prefix, smol.default_system) == ("", "You are a small helpful assistant.")
    llama32 = chat_format(bpe_tokenizer("llama-bpe", "llama3", LLAMA32_TEMPLATE), "x")
    assert (llama32.system_prefix, llama32.default_system) == ("Cutting Knowledge Date: December 2023\n\n", "")
    plain = chat_format(bpe_tokenizer("gpt-2"), "x")
    assert (plain.system_prefix, plain.default_system, plain.stop) == ("", None, ["<|im_end|>"])
    llama3 = chat_format(bpe_tokenizer("llama-bpe", "llama3"), "x")
    assert llama3.eot == "<|eot_id|>" and llama3.stop == ["<|eot_id|>"]


def test_an_unknown_template_gets_no_template_line(bpe_tokenizer):
    tokenizer = bpe_tokenizer("gpt-2")
    tokenizer.chat_template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}### assistant:"
    )
    fmt = chat_format(tokenizer, "x")
    assert fmt.family is None
    text = modelfile_text("m.gguf", fmt)
    assert "TEMPLATE" not in text.replace("No TEMPLATE", "") and 'PARAMETER stop "<|im_end|>"' in text
