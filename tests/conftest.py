import inspect
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

# Each test session builds its models into a fresh cache, so tests never depend on (or write to)
# the user's ~/.cache/lowtune.
_cache = os.environ.setdefault(
    "LOWTUNE_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lowtune-test-cache-{os.getpid()}")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_path():
    from lowtune import builtin

    return builtin.ensure("tiny-random")


@pytest.fixture
def tiny_recipe(tmp_path):
    """A fast SFT recipe on tiny-random writing into a temporary runs directory."""
    from lowtune.config import load_recipe

    return load_recipe(
        None,
        [
            "model.name=tiny-random",
            "data.n_train=64",
            "train.max_steps=4",
            "train.per_device_train_batch_size=4",
            "train.logging_steps=1",
            "eval.n=4",
            "eval.max_new_tokens=4",
            f"output.dir={tmp_path / 'runs'}",
            "output.quiet=true",
        ],
    )


WORDS = ["apple", "river", "stone", "cloud", "green", "seven", "table", "light", "music", "paper"]


def write_separable_pairs(path, n, seed=0):
    """Chosen replies are polite, rejected ones rude; prompts and filler words vary."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {
                "prompt": f"tell me about {topic}",
                "chosen": f"thank you, happy to help with {rng.choice(WORDS)}",
                "rejected": f"no. go away {rng.choice(WORDS)}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(name="separable_pairs")
def separable_pairs_fixture():
    """write_separable_pairs(path, n): a preference file any reward model or DPO can learn."""
    return write_separable_pairs


# Chat templates of the two families the GGUF Modelfile knows, in the shapes real models use them.
CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a small helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama-3.1/3.2 shape: a system turn always, its content a fixed preamble before the user's system prompt.
LLAMA32_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set rest = messages[1:] %}{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n' + system"
    " + '<|eot_id|>' }}"
    "{% for m in rest %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_BPE_CORPUS = [
    "What is 12 + 34? 12 + 34 = 46. The answer is 46. It's 1234567, isn't it? I'LL go; we've been there.",
    "def f(x):\n    return x ** 2\n\n\nprint(f(12345))  # caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e",
    "system user assistant The quick brown fox jumps over the lazy dog 0123456789 ,.;:!?()[]-+*/=\n\n",
] * 4


def make_bpe_tokenizer(pre: str, family: str = "chatml", template: str | None = None):
    """A small byte-level BPE tokenizer splitting text as llama.cpp's pre-tokenizer `pre` does.

    family "chatml": <|endoftext|>, <|im_start|>, <|im_end|> (eos); "llama3": <|begin_of_text|> added
    as BOS, header tokens and <|eot_id|>. llama-bpe tokenizers ignore merges, as Llama-3's do.
    """
    from tokenizers import Tokenizer, decoders, models, processors, trainers
    from tokenizers import pre_tokenizers as pt
    from transformers import PreTrainedTokenizerFast

    from lowtune.builtin import CHATML_TEMPLATE
    from lowtune.pretokenizers import PRE_TOKENIZERS, hf_pre_tokenizer

    specials = {
        "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    }[family]
    tk = Tokenizer(models.BPE(ignore_merges=PRE_TOKENIZERS[pre][1]))
    tk.pre_tokenizer = hf_pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pt.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(_BPE_CORPUS, trainer)
    if family == "chatml":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        tokenizer.chat_template = template or CHATML_TEMPLATE
    else:
        bos = tk.token_to_id("<|begin_of_text|>")
        tk.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
        )
        tokenizer.chat_template = template or LLAMA3_TEMPLATE
    return tokenizer


@pytest.fixture(name="bpe_tokenizer")
def bpe_tokenizer_fixture():
    """make_bpe_tokenizer(pre, family="chatml", template=None): a local tokenizer of a given kind."""
    return make_bpe_tokenizer


def make_random_adapter(tiny_path, out, seed=0):
    """A PEFT adapter on every linear layer of tiny-random with non-zero B, so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(name="random_adapter")
def random_adapter_fixture():
    """make_random_adapter(base_path, out): a saved PEFT adapter whose B is not zero."""
    return make_random_adapter


# Runs lowtune's CLI in a child process that sends itself SIGNAL at the end of step STEP.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    import lowtune.training as training
    from lowtune.cli import main

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == {step}:
                os.kill(os.getpid(), signal.{signal})

    fit = training.fit
    def fit_with_stop(trainer, *args):
        trainer.add_callback(Stop())
        return fit(trainer, *args)
    training.fit = fit_with_stop
    {prelude}
    sys.exit(main(sys.argv[1:]))
    """
)


def low_token_share(completions, completion_ids, **kwargs):
    """Reward: the share of a completion's tokens with id below 96, a set of tokens tiny-random can learn to favour
    (it earns no accuracy reward: every advantage would be 0)."""
    return [sum(t < 96 for t in ids) / max(len(ids), 1) for ids in completion_ids]


# A child's prelude for the methods that sample and score with the rule rewards (GRPO, RLOO, online DPO): their
# reward becomes `low_token_share`; with the shipped accuracy reward tiny-random earns nothing, every advantage
# would be 0 and the adapter would never leave its init.
LEARNABLE_REWARD = f"""
import lowtune.rewards as rewards

{inspect.getsource(low_token_share)}
rewards.recipe_rewards = lambda cfg, max_completion_length: ([low_token_share], [1.0])
"""
# The methods' shipped recipes made small for tiny-random: 6 steps, a checkpoint every 2, a 4-problem held-out score.
TINY_RUN = ["model.name=tiny-random", "train.max_steps=6", "train.save_steps=2", "train.logging_steps=1",
            "train.learning_rate=1e-3", "eval.n=4", "eval.max_new_tokens=4", "output.quiet=true"]  # fmt: skip


def lowtune(*argv, stop_at=None, signal="SIGKILL", prelude=""):
    """lowtune's CLI in a child process; `stop_at`: it sends itself `signal` at the end of that step; `prelude`:
    code the child runs first."""
    if stop_at is None and not prelude:
        code = ["-m", "lowtune"]
    else:
        code = ["-c", CHILD.format(step=stop_at, signal=signal, prelude=prelude)]
    return subprocess.run([sys.executable, *code, *argv], capture_output=True, text=True, timeout=600)


def adapter(run_dir):
    """The run's adapter weights, by name."""
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def train_stopped_and_resumed(tmp_path, args, prelude="", stop_at=3):
    """`lowtune *args` (a `train` command) three times, each in a child process: uninterrupted into
    tmp_path/whole, stopped by SIGTERM at the end of step `stop_at` into tmp_path/runs, then resumed. Checks that
    the stop kept a checkpoint of that step, that the resumed run went on from it (each step logged once; log every
    step) and ends with the uninterrupted run's adapter (trained: its B matrices left their init at 0).
    Returns (resumed run, uninterrupted run) directories."""
    import torch

    from lowtune.runs import RunDir

    whole = lowtune(*args, f"output.dir={tmp_path / 'whole'}", prelude=prelude)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    stopped = lowtune(*args, f"output.dir={tmp_path / 'runs'}", stop_at=stop_at, signal="SIGTERM", prelude=prelude)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    (run,), (uninterrupted,) = (tmp_path / "runs").iterdir(), (tmp_path / "whole").iterdir()
    assert RunDir(run).last_checkpoint().name == f"checkpoint-{stop_at}"
    assert not (run / "adapter").exists()
    resumed = lowtune("train", "--resume", str(run), "--quiet", prelude=prelude)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {run} from {run / 'checkpoints' / f'checkpoint-{stop_at}'}" in resumed.stdout
    steps = json.loads((uninterrupted / "summary.json").read_text())["steps"]
    assert json.loads((run / "summary.json").read_text())["steps"] == steps
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == list(range(1, steps + 1))  # each step once: not rerun
    ours, want = adapter(run), adapter(uninterrupted)
    assert ours.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(ours[key], want[key], rtol=1e-4, atol=1e-6)
    assert any(v.abs().max() > 0 for k, v in want.items() if "lora_B" in k)
    return run, uninterrupted


def check_plain_peft_adapter(adapter_dir):
    """The adapter loads on its base with transformers and peft alone (nothing of lowtune) and changes the base's
    logits; it is the one trained adapter (no other adapter saved beside it, e.g. a trainer's frozen `ref` copy)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not [p for p in adapter_dir.iterdir() if p.is_dir()], sorted(p.name for p in adapter_dir.iterdir())
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_path)(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_dir)
        assert not torch.allclose(tuned(input_ids=ids).logits, base)
