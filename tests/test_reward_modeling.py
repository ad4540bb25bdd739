"""Reward modeling on tiny-random: it learns separable pairs, and the saved adapter alone reproduces its scores."""

import json

import pytest
import torch

from lowtune import recipes
from lowtune.cli import main
from lowtune.config import load_recipe
from lowtune.scoring import RewardModel, score


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    from tests.conftest import write_separable_pairs

    tmp = tmp_path_factory.mktemp("reward")
    data = write_separable_pairs(tmp / "pairs.jsonl", 160)
    recipe = load_recipe(
        None,
        [
            "method=reward",
            "model.name=tiny-random",
            f"data.source={data}",
            "data.heldout=32",
            "train.max_steps=30",
            "train.per_device_train_batch_size=8",
            "train.learning_rate=1e-3",
            "train.logging_steps=5",
            f"output.dir={tmp / 'runs'}",
            "output.quiet=true",
        ],
    )
    run, summary = recipes.train(recipe)
    return run, summary


def test_reward_model_learns_separable_pairs(reward_run):
    run, summary = reward_run
    assert summary["method"] == "reward" and summary["rows"] == 128
    assert summary["pairwise_after"]["n"] == 32
    assert summary["pairwise_after"]["accuracy"] >= 0.9
    assert summary["pairwise_after"]["mean_margin"] > summary["pairwise_before"]["mean_margin"] + 0.5
    assert summary["final_loss"] < summary["first_loss"]
    assert json.loads(run.summary.read_text())["pairwise_after"] == summary["pairwise_after"]


def test_saved_adapter_alone_reproduces_the_scores_with_plain_peft(reward_run, tiny_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, _ = reward_run
    saved = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert any("score" in k for k in saved), "the score head must be saved inside the adapter"

    conversations = [
        [{"role": "user", "content": "tell me about stone"}, {"role": "assistant", "content": reply}]
        for reply in ("thank you, happy to help with river", "no. go away river", "hello")
    ]
    ours = RewardModel.load(run.path).score(conversations)
    assert ours[0] > ours[1]

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_path), num_labels=1)
    plain = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter))
    theirs = []
    for c in conversations:
        ids = tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            theirs.append(plain(input_ids=torch.tensor([ids])).logits[0, 0].item())
    assert ours == pytest.approx(theirs, abs=1e-5)
    # The same scores through the one-call API, batched, in order.
    assert score(run.path, conversations) == pytest.approx(ours, abs=1e-5)


def test_score_reads_hh_transcripts_and_plain_text(reward_run):
    run, _ = reward_run
    rm = RewardModel.load(run.path)
    messages = [{"role": "user", "content": "tell me about stone"}, {"role": "assistant", "content": "no. go away"}]
    transcript = "\n\nHuman: tell me about stone\n\nAssistant: no. go away"
    assert rm.score([transcript]) == pytest.approx(rm.score([messages]), abs=1e-6)
    plain = rm.score(["no. go away"])
    assert plain[0] != pytest.approx(rm.score([messages])[0], abs=1e-6)  # no chat template around plain text


def test_score_cli(reward_run, capsys):
    run, _ = reward_run
    code = main(["score", str(run.path), "--prompt", "tell me about stone",
                 "--reply", "thank you, happy to help with river", "--reply", "no. go away river"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "reward scores" in out and "thank you, happy to help with river" in out
    lines = [line for line in out.splitlines() if "river" in line]
    values = [float(line.split("│")[1]) for line in lines]
    assert values[0] > values[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reply", "hi"], "--reply needs --prompt"),
        (["--prompt", "hi"], "--prompt needs at least one --reply"),
        ([], "nothing to score"),
    ],
)
def test_score_cli_errors(reward_run, capsys, argv, message):
    run, _ = reward_run
    assert main(["score", str(run.path), *argv]) == 2
    assert message in capsys.readouterr().out


def test_score_refuses_what_is_not_a_reward_adapter(tmp_path, tiny_recipe, capsys):
    run, _ = recipes.train(tiny_recipe)  # an SFT run: a causal-LM adapter
    assert main(["score", str(run.path), "--text", "hello"]) == 2
    assert "is not a reward model adapter" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "nothing"), "--text", "hello"]) == 2
    assert "neither a run directory nor an adapter directory" in capsys.readouterr().out


def test_pickle_adapter_is_refused(reward_run, tmp_path, capsys):
    import shutil

    run, _ = reward_run
    copy = tmp_path / "adapter"
    shutil.copytree(run.adapter, copy)
    (copy / "adapter_model.safetensors").rename(copy / "adapter_model.bin")
    assert main(["score", str(copy), "--text", "hello"]) == 2
    assert "lowtune loads safetensors only" in capsys.readouterr().out


def test_reward_on_nf4_base(tmp_path, separable_pairs):
    """QLoRA path: the 4-bit base gets a trainable score head and LoRA, and the run completes."""
    pytest.importorskip("bitsandbytes")
    data = separable_pairs(tmp_path / "pairs.jsonl", 24)
    recipe = load_recipe(
        None,
        ["method=reward", "model.name=tiny-random", "model.quantization=nf4", f"data.source={data}",
         "data.heldout=8", "train.max_steps=2", "train.per_device_train_batch_size=4",
         f"output.dir={tmp_path / 'runs'}", "output.quiet=true"],
    )  # fmt: skip
    run, summary = recipes.train(recipe)
    assert summary["quantization"] == "nf4" and summary["steps"] == 2
    assert (run.adapter / "adapter_model.safetensors").is_file()


def test_merge_refuses_a_reward_adapter_clearly(reward_run, tmp_path, capsys):
    run, _ = reward_run
    assert main(["merge", str(run.path), "--out", str(tmp_path / "merged")]) == 2
    assert "is a SEQ_CLS adapter (a reward model)" in capsys.readouterr().out
    assert not (tmp_path / "merged").exists()
    assert main(["generate", str(run.path), "--prompt", "hi"]) == 2
    assert "is a reward model; it scores text" in capsys.readouterr().out
