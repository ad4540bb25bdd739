"""DPO on tiny-random: the reference is the base with the adapter off (no second copy), and the margin grows."""

import gc

import pytest
import torch

from lowtune import data, models, recipes
from lowtune.config import load_recipe
from lowtune.recipes import dpo
from lowtune.runs import RunDir
from tests.conftest import write_separable_pairs


def dpo_recipe(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs = write_separable_pairs(tmp_path / "pairs.jsonl", 96)
    return load_recipe(
        None,
        [
            "method=dpo",
            "model.name=tiny-random",
            f"data.source={pairs}",
            "data.heldout=32",
            "train.max_steps=20",
            "train.per_device_train_batch_size=8",
            "train.learning_rate=1e-3",
            "train.logging_steps=5",
            "eval.task=null",
            f"output.dir={tmp_path / 'runs'}",
            "output.quiet=true",
            *overrides,
        ],
    )


def live_tensors() -> dict[int, int]:
    """data_ptr -> bytes of every tensor the garbage collector can see."""
    out = {}
    for obj in gc.get_objects():
        try:
            if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu" and obj.numel():
                out[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        except Exception:  # noqa: BLE001 (some objects refuse isinstance/attribute access)
            continue
    return out


def test_reference_is_the_base_with_the_adapter_off_and_the_margin_grows(tmp_path):
    recipe = dpo_recipe(tmp_path)
    base, tokenizer = models.load(recipe.model)
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    pairs = data.load_pairs(recipe.data)
    run_dir = RunDir.create(recipe)

    gc.collect()
    before = live_tensors()
    trainer = dpo.make_trainer(recipe, recipes.trl_args(recipe, run_dir), base, tokenizer, pairs)
    gc.collect()
    new = {ptr: n for ptr, n in live_tensors().items() if ptr not in before}

    # No second model: no ref_model, no "ref" adapter, and constructing the trainer allocated far less
    # than one copy of the base (only the LoRA matrices, a few percent of it).
    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]
    lora_bytes = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(new.values()) < lora_bytes + 0.25 * base_bytes
    base_ptrs = {p.untyped_storage().data_ptr() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert base_ptrs <= set(before), "the wrapped model must reuse the base's own weight storage"

    start = trainer.evaluate()
    assert start["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before training
    trainer.train()
    end = trainer.evaluate()
    assert end["eval_rewards/margins"] > 0.5
    assert end["eval_rewards/accuracies"] >= 0.9


def test_dpo_recipe_end_to_end_on_arithmetic_pairs(tmp_path):
    recipe = load_recipe(
        None,
        ["method=dpo", "model.name=tiny-random", "data.n_train=64", "data.heldout=16", "train.max_steps=4",
         "train.per_device_train_batch_size=8", "eval.n=4", "eval.max_new_tokens=4",
         f"output.dir={tmp_path / 'runs'}", "output.quiet=true"],
    )  # fmt: skip
    run, summary = recipes.train(recipe)
    assert summary["method"] == "dpo" and summary["data_format"] == "arithmetic"
    assert summary["loss_type"] == ["sigmoid"] and summary["beta"] == 0.1
    assert summary["preference_after"]["n"] == 16
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    assert (run.adapter / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("overrides", [["train.loss_type=ipo"], ["train.loss_type=[sigmoid, sft]"]])
def test_loss_types_pass_through(tmp_path, overrides):
    recipe = dpo_recipe(tmp_path, "train.max_steps=2", *overrides)
    run, summary = recipes.train(recipe)
    assert summary["loss_type"] == recipe.train["loss_type"]
    assert summary["steps"] == 2


def completion_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token | everything before it) for each completion token: full-vocabulary log_softmax of
    one unpadded sequence."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return logp.gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1 :, 0]


@pytest.mark.parametrize(
    "overrides",
    [["train.loss_type=sigmoid"], ["train.loss_type=ipo"],
     ["train.loss_type=[sigmoid, sft]", "train.loss_weights=[1.0, 0.5]"]],
)  # fmt: skip
def test_loss_matches_a_hand_computation_with_a_trained_adapter(tmp_path, overrides):
    """The loss TRL computes on one batch, for the loss types the recipe passes through, against the papers'
    formulas on sequence log-probs computed here: the policy with a non-zero adapter (so not log 2 for sigmoid),
    the reference a separate copy of the base."""
    import math

    import torch.nn.functional as F

    recipe = dpo_recipe(tmp_path, *overrides)
    base, tokenizer = models.load(recipe.model)
    reference, _ = models.load(recipe.model)
    trainer = dpo.make_trainer(
        recipe, recipes.trl_args(recipe, RunDir.create(recipe)), base, tokenizer, data.load_pairs(recipe.data)
    )
    model = trainer.model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: B (zero at init) gets random values
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    model.eval()
    rows = [trainer.train_dataset[i] for i in range(4)]
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer.data_collator(rows)).item()

    beta = 0.1  # lowtune's default
    margins, ipo_deltas, chosen_tokens = [], [], []
    for row in rows:
        ratios = []
        for reply in ("chosen_ids", "rejected_ids"):
            policy = completion_logps(model, row["prompt_ids"], row[reply])
            ref = completion_logps(reference, row["prompt_ids"], row[reply])
            ratios.append((policy.sum() - ref.sum(), len(row[reply])))
            if reply == "chosen_ids":
                chosen_tokens.append(policy)
        (chosen, n_chosen), (rejected, n_rejected) = ratios
        margins.append(chosen - rejected)
        ipo_deltas.append(chosen / n_chosen - rejected / n_rejected)
    margins, ipo_deltas = torch.stack(margins), torch.stack(ipo_deltas)
    assert margins.abs().min() > 0.05  # the policy is not the reference
    sigmoid = -F.logsigmoid(beta * margins).mean()  # Rafailov et al. 2023
    ipo = ((ipo_deltas - 1 / (2 * beta)) ** 2).mean()  # Azar et al. 2023, per-token log-ratios (as TRL)
    sft = -torch.cat(chosen_tokens).mean()  # the chosen replies' NLL per token
    want = {"sigmoid": sigmoid, "ipo": ipo, "[sigmoid, sft]": sigmoid + 0.5 * sft}[overrides[0].split("=")[1]]
    assert loss == pytest.approx(want.item(), rel=1e-4)
    if overrides[0].endswith("sigmoid"):
        assert abs(loss - math.log(2)) > 1e-3


def test_precomputed_reference_log_probs_match_the_live_reference(tmp_path):
    live = dpo_recipe(tmp_path / "a", "train.max_steps=3", "train.logging_steps=1")
    pre = dpo_recipe(
        tmp_path / "b", "train.max_steps=3", "train.logging_steps=1", "train.precompute_ref_log_probs=true"
    )
    _, a = recipes.train(live)
    _, b = recipes.train(pre)
    assert b["first_loss"] == pytest.approx(a["first_loss"], rel=1e-4)
    assert b["preference_after"]["mean_margin"] == pytest.approx(a["preference_after"]["mean_margin"], rel=1e-3)


def test_lowtune_kernel_is_refused_for_dpo(tmp_path):
    from lowtune.errors import LowtuneError

    with pytest.raises(LowtuneError, match="DPO uses TRL's chunked log-probs"):
        recipes.train(dpo_recipe(tmp_path, "model.logprob_kernel=lowtune"))
