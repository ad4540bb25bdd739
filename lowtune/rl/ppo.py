"""PPO for language models (Ouyang et al. 2022's RLHF step) as a transformers `Trainer`.

One trainer step is one optimizer step on one minibatch of a rollout. Every
`num_ppo_epochs * num_mini_batches` steps the trainer samples a new rollout:

1. generate a response per prompt with the policy (temperature, top-p, at most `max_new_tokens`,
   ending at the end-of-turn token);
2. per-token log-probs of the policy and the reference (lowtune's `token_logprobs`), values;
3. a score per response: the reward adapter's score and/or the rule rewards (GRPO's reward
   signature), minus `missing_eos_penalty` for a response that never ended;
4. per-token rewards: -beta * KL on each token, the score on the last (EOS) token; GAE advantages,
   whitened over the rollout; returns = advantages + values.

Then `num_ppo_epochs` passes over the rollout in shuffled minibatches: clipped surrogate loss +
`vf_coef` * clipped value loss. Dropout is off throughout (LoRA's `lora.dropout` included), as in TRL's
PPOTrainer: the rollout is scored in eval mode and the loss in train mode, so with dropout on, the
importance ratio and the value clip would not start at 1 and at the rollout's values. Being a
Trainer gives the rest: optimizer, schedule, gradient accumulation, checkpoints (which here also
hold the rollout in progress, so a resumed run continues exactly), callbacks and logging.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import Trainer

from lowtune.errors import LowtuneError
from lowtune.kernels import token_logprobs
from lowtune.rl import core
from lowtune.rl.config import PPOConfig
from lowtune.rl.model import POLICY, REFERENCE, REWARD, VALUE, ActorCritic

__all__ = ["PPOConfig", "PPOTrainer"]

ROLLOUT_FILE = "rollout.safetensors"


class RolloutSampler(Sampler):
    """Shuffled prompt indices in rollout-sized groups, each group repeated once per micro-step that
    trains on it (the trainer generates on the first and reuses the rollout after)."""

    def __init__(self, n: int, rollout: int, repeats: int, seed: int):
        self.n, self.rollout, self.repeats, self.seed, self.epoch = n, rollout, repeats, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, self.n - self.rollout + 1, self.rollout):
            for _ in range(self.repeats):
                yield from order[start : start + self.rollout]

    def __len__(self) -> int:
        return (self.n // self.rollout) * self.rollout * self.repeats


class PPOTrainer(Trainer):
    """`model` is an ActorCritic; `reward_funcs` are GRPO-style rule rewards (with `reward_weights`),
    used alone or added to the reward adapter's score."""

    def __init__(
        self,
        model: ActorCritic,
        args: PPOConfig,
        train_dataset,
        processing_class,
        reward_funcs: list | None = None,
        reward_weights: list[float] | None = None,
        reward_encode=None,
        stop_token_ids: list[int] | None = None,
        **kwargs,
    ):
        if not reward_funcs and not model.has_reward_adapter:
            raise ValueError("PPO needs a reward: a reward adapter, reward functions, or both")
        if len(train_dataset) < args.rollout_size:
            raise ValueError(
                f"{len(train_dataset)} prompts are fewer than one rollout ({args.rollout_size} = "
                "per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches)"
            )
        model.activate(POLICY)
        model.restore_grad_flags()  # before the optimizer collects the trainable parameters
        disable_dropout(model)
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
            data_collator=lambda rows: rows, **kwargs,
        )  # fmt: skip
        self.reward_funcs = reward_funcs or []
        self.reward_weights = reward_weights or [1.0] * len(self.reward_funcs)
        self.reward_encode = reward_encode  # conversation -> token ids, as the reward model reads it
        tok = processing_class
        self.stop_token_ids = stop_token_ids or [tok.eos_token_id]
        self.kl_control = core.AdaptiveKL(args.kl_coef, args.kl_target, args.kl_horizon)
        self.rollout: dict[str, torch.Tensor] | None = None
        self._micro_step: int | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------ data

    def get_train_dataloader(self):
        args = self.args
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=args.rollout_size,
            sampler_fn=lambda ds: RolloutSampler(len(ds), args.rollout_size, args.micro_steps_per_rollout, args.seed),
            is_training=True,
        )

    def _prepare_inputs(self, rows):
        """The minibatch this micro-step trains on (sampling a new rollout from `rows` when one is due)."""
        args = self.args
        if self._micro_step is None:  # first step of this process: fresh or resumed
            self._micro_step = self.state.global_step * args.gradient_accumulation_steps
        index = self._micro_step % args.micro_steps_per_rollout
        rollout_number = self._micro_step // args.micro_steps_per_rollout
        if index == 0 or self.rollout is None:
            self.rollout = self._make_rollout(rows)
        self._micro_step += 1
        per_epoch = args.num_mini_batches * args.gradient_accumulation_steps
        ppo_epoch, slot = divmod(index, per_epoch)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + rollout_number * 101 + ppo_epoch)
        order = torch.randperm(args.rollout_size, generator=g)
        size = args.per_device_train_batch_size
        picked = order[slot * size : (slot + 1) * size]
        return {k: v[picked] for k, v in self.rollout.items() if k != "prompt_width"} | {
            "prompt_width": int(self.rollout["prompt_width"])
        }

    # ------------------------------------------------------------ rollout

    @torch.no_grad()
    def _make_rollout(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        model, args, tok = self.model, self.args, self.processing_class
        device = model.lm_head.weight.device
        was_training = model.training
        model.eval()
        texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
        model.activate(POLICY)
        sequences = model.peft.generate(
            **enc,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=tok.pad_token_id,
        )
        width = enc["input_ids"].shape[1]
        responses = sequences[:, width:]
        mask = response_mask(responses, self.stop_token_ids)
        ended = (torch.isin(responses, torch.tensor(self.stop_token_ids, device=device)) & (mask > 0)).any(1)
        attention = torch.cat([enc["attention_mask"], mask], dim=1)
        batch = dict(
            input_ids=sequences, attention_mask=attention, position_ids=positions(attention),
            responses=responses, mask=mask,
        )  # fmt: skip

        logps, ref_logps, values, entropies = [], [], [], []
        for part in _chunks(batch, args.per_device_train_batch_size):
            logp, entropy = self._logprobs(POLICY, part, width, entropy=True)
            logps.append(logp), entropies.append(entropy)
            ref_logps.append(self._logprobs(REFERENCE, part, width))
            values.append(self._values(part, width))
        logp, ref_logp, value = torch.cat(logps), torch.cat(ref_logps), torch.cat(values)
        entropy = torch.cat(entropies)
        replies = tok.batch_decode(responses * mask + tok.pad_token_id * (1 - mask), skip_special_tokens=True)
        score, parts = self._scores(rows, replies, responses, mask, batch, width)
        score = score - args.missing_eos_penalty * (~ended).float()

        fmask = mask.float()
        kl = core.kl_penalty(logp, ref_logp, args.kl_estimator) * fmask
        rewards = core.token_rewards(score, kl, fmask, self.kl_control.beta)
        if args.whiten_rewards:
            rewards = core.whiten(rewards, fmask, shift_mean=False)
        advantages, returns = core.gae(rewards, value, fmask, args.gamma, args.lam)
        advantages = core.whiten(advantages, fmask)

        kl_per_response = (core.kl_penalty(logp, ref_logp, "k1") * fmask).sum(1)
        m = self._metrics
        m["score"].append(score.mean().item())
        for name, value_list in parts.items():
            m[f"rewards/{name}"].append(sum(value_list) / len(value_list))
        m["kl"].append(kl_per_response.mean().item())
        m["non_score_reward"].append((-self.kl_control.beta * kl.sum(1)).mean().item())
        m["entropy"].append(core.masked_mean(entropy, fmask).item())
        m["response_length"].append(fmask.sum(1).mean().item())
        m["ended_fraction"].append(ended.float().mean().item())
        m["explained_variance"].append(core.explained_variance(value, returns, fmask))
        m["beta"].append(self.kl_control.beta)
        self.kl_control.update(kl_per_response.mean().item(), len(rows))
        self.state.num_input_tokens_seen += int(attention.sum())  # generated and scored once
        model.train(was_training)
        return dict(
            **batch, logp=logp, values=value, advantages=advantages, returns=returns,
            prompt_width=torch.tensor(width),
        )  # fmt: skip

    def _logprobs(self, role: str, batch: dict, width: int, entropy: bool = False):
        hidden = self.model.hidden(role, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        hidden = hidden[:, width - 1 : -1]  # the state before each response token predicts it
        labels = batch["responses"].masked_fill(batch["mask"] == 0, -100)
        head = self.model.lm_head
        return token_logprobs(
            hidden, head.weight, labels, bias=head.bias, temperature=self.args.temperature, return_entropy=entropy
        )

    def _values(self, batch: dict, width: int) -> torch.Tensor:
        hidden = self.model.hidden(VALUE, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        return self.model.values(hidden[:, width - 1 : -1]) * batch["mask"]

    def _scores(self, rows, replies, responses, mask, batch, width) -> tuple[torch.Tensor, dict[str, list[float]]]:
        device = responses.device
        total = torch.zeros(len(rows), device=device)
        parts: dict[str, list[float]] = {}
        if self.reward_funcs:
            columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
            completions = [[{"role": "assistant", "content": text}] for text in replies]
            ids = [r[: int(n)].tolist() for r, n in zip(responses, mask.sum(1), strict=True)]
            for func, weight in zip(self.reward_funcs, self.reward_weights, strict=True):
                values = func(
                    completions=completions, prompts=[r["prompt"] for r in rows], completion_ids=ids, **columns
                )
                values = checked_rewards(func, values, rows)
                parts[func.__name__] = values
                total += weight * torch.tensor(values, device=device)
        if self.model.has_reward_adapter:
            conversations = [
                [*r["prompt"], {"role": "assistant", "content": t}] for r, t in zip(rows, replies, strict=True)
            ]
            rm = self.reward_model_scores([self.reward_encode(c) for c in conversations])
            parts["reward_model"] = rm.tolist()
            total += rm
        return total, parts

    @torch.no_grad()
    def reward_model_scores(self, sequences: list[list[int]]) -> torch.Tensor:
        """The reward adapter's score of each token-id sequence (at its last token, as the reward model was trained)."""
        device, pad = self.model.lm_head.weight.device, self.processing_class.pad_token_id
        out = []
        for start in range(0, len(sequences), self.args.per_device_train_batch_size):
            batch = sequences[start : start + self.args.per_device_train_batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
            attention = torch.zeros_like(ids)
            for row, s in enumerate(batch):
                ids[row, : len(s)] = torch.tensor(s, device=device)
                attention[row, : len(s)] = 1
            hidden = self.model.hidden(REWARD, ids, attention)
            last = attention.sum(1) - 1
            out.append(self.model.scores(hidden[torch.arange(len(batch), device=device), last]))
        self.model.activate(POLICY)
        return torch.cat(out)

    # ------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, width = self.args, inputs["prompt_width"]
        mask = inputs["mask"].float()
        logp, entropy = self._logprobs(POLICY, inputs, width, entropy=True)
        pg_loss, clip_fraction, approx_kl = core.policy_loss(
            logp, inputs["logp"], inputs["advantages"], mask, args.cliprange
        )
        values = self._values(inputs, width)
        vf_loss, vf_clip_fraction = core.value_loss(
            values, inputs["values"], inputs["returns"], mask, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss
        m = self._metrics
        m["policy_loss"].append(pg_loss.item())
        m["value_loss"].append(vf_loss.item())
        m["clip_fraction"].append(clip_fraction.item())
        m["value_clip_fraction"].append(vf_clip_fraction.item())
        m["approx_kl"].append(approx_kl.item())
        m["policy_entropy"].append(core.masked_mean(entropy.detach(), mask).item())
        self.state.num_input_tokens_seen += int(inputs["attention_mask"].sum())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._metrics.items():
            finite = [v for v in values if v == v]
            if finite:
                logs[key] = sum(finite) / len(finite)
        self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------ saving and resuming

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.model.save(output_dir)
        self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """A checkpoint also holds the rollout being trained on and beta, so a resumed run continues exactly.
        Written before transformers' own files: trainer_state.json, written last, marks a checkpoint complete."""
        from safetensors.torch import save_file

        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"beta": torch.tensor(self.kl_control.beta, dtype=torch.float64)}
        if self.rollout is not None:
            state |= {f"rollout.{k}": v.contiguous().cpu() for k, v in self.rollout.items()}
        save_file(state, folder / ROLLOUT_FILE)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        folder = Path(resume_from_checkpoint)
        self.model.load(folder)
        if (folder / ROLLOUT_FILE).is_file():
            state = load_file(folder / ROLLOUT_FILE, device=str(self.model.lm_head.weight.device))
            self.kl_control.beta = float(state.pop("beta"))
            rollout = {k.removeprefix("rollout."): v for k, v in state.items()}
            self.rollout = rollout or None


# ---------------------------------------------------------------- helpers


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off for good: p = 0 in every nn.Dropout (PEFT's LoRA dropout is one) and a 0 `attention_dropout`
    in the attention modules that keep it as a number (transformers' Llama, Qwen2, ... apply it functionally)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def checked_rewards(func, values, rows: list[dict]) -> list[float]:
    """A reward function's values as floats, one per response; anything else is an error naming the function
    and the response (a None or NaN would spread to the whole rollout through the advantages' whitening)."""
    name = getattr(func, "__name__", repr(func))
    values = list(values)
    if len(values) != len(rows):
        raise LowtuneError(f"reward function {name} returned {len(values)} values for {len(rows)} responses")
    out = []
    for i, value in enumerate(values):
        try:
            number = None if value is None else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            raise LowtuneError(
                f"reward function {name} returned {value!r} for response {i} of {len(rows)} in the rollout "
                f"(prompt: {_prompt_start(rows[i].get('prompt'))}); PPO needs a finite number for every response "
                "(unlike TRL's GRPO, it does not read None as 'not applicable')"
            )
        out.append(number)
    return out


def _prompt_start(prompt, limit: int = 60) -> str:
    """The start of a prompt's last message (or of a plain-text prompt), quoted, for an error message."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        prompt = prompt[-1].get("content", "")
    text = str(prompt)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 on each response token up to and including the first stop token (all of it when none)."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (stops_before == 0).long()


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as `generate` uses them."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def _chunks(batch: dict[str, torch.Tensor], size: int):
    n = len(next(iter(batch.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in batch.items()}
