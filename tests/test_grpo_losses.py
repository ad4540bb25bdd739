"""GRPO's loss family through lowtune (TRL 1.16): `train.loss_type` and `train.importance_sampling_level` pass
through to TRL's GRPOConfig. For grpo, dr_grpo and dapo the loss TRL computes on one fixed batch equals the papers'
formula computed here by hand; every other loss type, and GSPO, trains two steps and logs a finite loss."""

import json
import math

import pytest
import torch

import lowtune.rewards
from lowtune import data, models, recipes
from lowtune.config import load_recipe
from lowtune.recipes import grpo
from lowtune.runs import RunDir
from tests.conftest import low_token_share

B, T, MAX_COMPLETION = 4, 6, 8  # completions, their padded length, train.max_completion_length
LENGTHS = [6, 3, 5, 1]
ADVANTAGES = [1.5, -0.7, 0.3, -1.2]


def grpo_recipe(tmp_path, *overrides):
    return load_recipe(
        recipes.find_recipe("grpo"),
        ["model.name=tiny-random", "data.n_train=8", "train.num_generations=4", "train.per_device_train_batch_size=4",
         f"train.max_completion_length={MAX_COMPLETION}", "train.logging_steps=1", "eval.task=null",
         f"output.dir={tmp_path}", "output.quiet=true", *overrides],
    )  # fmt: skip


def fixed_batch():
    """Per-token log-probs of the policy now, of the policy that sampled (old) and of the reference, for B completions
    of different lengths. The old ones are up to 0.6 nats off, so ratios fall on both sides of the clip range; the
    padding holds values that would swamp the loss if it were counted."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS])
    logps = -0.1 - 3 * torch.rand(B, T, generator=g)
    old = logps + 1.2 * (torch.rand(B, T, generator=g) - 0.5)
    ref = logps + 0.3 * torch.randn(B, T, generator=g)
    logps, old = logps.masked_fill(mask == 0, 7.0), old.masked_fill(mask == 0, -9.0)
    return logps, old, ref, mask


def by_hand(loss_type, beta, eps_low, eps_high):
    """The papers' objectives, token by token in plain Python; the loss is minus the objective.

    Per token, with ratio r = pi/pi_old and the sequence's advantage A: the clipped surrogate
    s = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), and the KL estimate k3 = pi_ref/pi - log(pi_ref/pi) - 1.
    - grpo (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300): (1/G) sum_i (1/|o_i|) sum_t (s - beta k3), each
      sequence's mean over its own tokens;
    - dr_grpo (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783):
      GRPO without the per-sequence 1/|o_i|, the sum over tokens divided by one constant instead (TRL: the
      generation budget, max_completion_length): (1/(G * max_len)) sum_i sum_t (s - beta k3);
    - dapo (Yu et al. 2025, "DAPO", arXiv:2503.14476): token-level, (1/sum_i |o_i|) sum_i sum_t s, with the
      decoupled clip range (clip-higher: eps_high > eps_low) and no KL term.
    """
    logps, old, ref, _ = fixed_batch()
    per_sequence = []
    for i, n in enumerate(LENGTHS):
        terms = []
        for t in range(n):
            lp, r = logps[i, t].item(), math.exp(logps[i, t].item() - old[i, t].item())
            a = ADVANTAGES[i]
            s = min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
            k3 = math.exp(ref[i, t].item() - lp) - (ref[i, t].item() - lp) - 1
            terms.append(s - beta * k3)
        per_sequence.append(terms)
    if loss_type == "grpo":
        return -sum(sum(terms) / len(terms) for terms in per_sequence) / B
    if loss_type == "dr_grpo":
        return -sum(sum(terms) for terms in per_sequence) / (B * MAX_COMPLETION)
    return -sum(sum(terms) for terms in per_sequence) / sum(LENGTHS)


@pytest.mark.parametrize(
    "loss_type, beta, eps_low, eps_high",
    [("grpo", 0.04, 0.2, 0.2), ("dr_grpo", 0.0, 0.2, 0.2), ("dapo", 0.0, 0.2, 0.28)],
)
def test_loss_matches_the_papers_formula_on_a_fixed_batch(tmp_path, loss_type, beta, eps_low, eps_high):
    """TRL's `_compute_loss` on one batch whose per-token log-probs are fixed (its log-prob function replaced),
    against `by_hand`."""
    # TRL 1.16 multiplies the KL term by the ratio by default (DeepSeek-V3.2's bias correction); the paper's does not.
    recipe = grpo_recipe(tmp_path, f"train.loss_type={loss_type}", f"train.beta={beta}", f"train.epsilon={eps_low}",
                         f"train.epsilon_high={eps_high}", "train.use_bias_correction_kl=false")  # fmt: skip
    model, tokenizer = models.load(recipe.model, recipe.lora)
    prompts = data.load(recipe.data, kind="prompt")
    trainer = grpo.make_trainer(recipe, recipes.trl_args(recipe, RunDir.create(recipe)), model, tokenizer, prompts)
    assert (trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high) == (
        loss_type, beta, eps_low, eps_high)  # fmt: skip

    logps, old, ref, mask = fixed_batch()
    current = logps.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (current, torch.zeros(B, T), None)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    inputs = {
        "prompt_ids": torch.full((B, 2), 5), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.full((B, T), 7), "completion_mask": mask.long(),
        "advantages": torch.tensor(ADVANTAGES), "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }  # fmt: skip
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()  # a loss TRL can train on: the gradient reaches the log-probs, and none of the padding's
    assert current.grad[mask == 1].abs().sum() > 0 and (current.grad[mask == 0] == 0).all()
    assert loss.item() == pytest.approx(by_hand(loss_type, beta, eps_low, eps_high), rel=1e-5, abs=1e-7)
    clipped = trainer._metrics["train"]["clip_ratio/region_mean"]
    assert clipped and 0 < clipped[-1] < 1  # the batch has clipped and unclipped tokens


@pytest.mark.parametrize(
    "name, overrides",
    [("bnpo", ["train.loss_type=bnpo"]), ("cispo", ["train.loss_type=cispo"]), ("sapo", ["train.loss_type=sapo"]),
     ("luspo", ["train.loss_type=luspo", "train.importance_sampling_level=sequence"]),
     ("vespo", ["train.loss_type=vespo"]),
     ("gspo", ["train.loss_type=grpo", "train.importance_sampling_level=sequence"])],
)  # fmt: skip
def test_every_other_loss_type_trains(tmp_path, monkeypatch, name, overrides):
    """Two steps through `lowtune.recipes.train` on a reward tiny-random can earn (so advantages are not 0), with
    the loss type (and importance-sampling level) TRL was given checked where it computes the loss."""
    from trl import GRPOTrainer

    seen = []
    compute_loss = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        seen.append((self.loss_type, self.importance_sampling_level))
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    monkeypatch.setattr(lowtune.rewards, "recipe_rewards", lambda cfg, max_len: ([low_token_share], [1.0]))
    recipe = grpo_recipe(tmp_path, "train.max_steps=2", "train.learning_rate=1e-2", *overrides)
    run, summary = recipes.train(recipe)
    level = "sequence" if "train.importance_sampling_level=sequence" in overrides else "token"
    assert set(seen) == {(overrides[0].split("=")[1], level)} and summary["steps"] == 2
    logs = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    assert math.isfinite(summary["final_loss"])
