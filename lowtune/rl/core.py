"""PPO's arithmetic as small pure functions on `[B, T]` tensors (`mask` is 1 on response tokens).

Formulas: GAE from Schulman et al. 2016 ("High-Dimensional Continuous Control Using Generalized
Advantage Estimation", eq. 16); the clipped surrogate and value losses from Schulman et al. 2017 (PPO)
as used for RLHF by Ziegler et al. 2019 and Ouyang et al. 2022; the KL estimators k1/k2/k3 from
Schulman's note "Approximating KL Divergence" (2020); the adaptive KL coefficient from Ziegler et al.
2019, section 2.2.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (0 with fewer than two)."""
    n = mask.sum()
    if n < 2:
        return x.new_zeros(())
    centered = (x - masked_mean(x, mask)) * mask
    return (centered**2).sum() / (n - 1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale the masked entries to unit variance (and zero mean with `shift_mean`); masked-out entries become 0."""
    mask = mask.to(x.dtype)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns (= advantages + values).

    The trajectory of a row is its masked-in positions in order, so left or right padding, or a gap,
    is skipped over: a step's successor is the next position with mask 1, and the last one has none
    (value 0). `delta_t = r_t + gamma * V_next - V_t`, `A_t = delta_t + gamma * lam * A_next`.
    Masked-out positions get 0 in both outputs.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_advantage = torch.where(m > 0, advantage, next_advantage)
    return advantages, (advantages + values) * mask


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy.

    k1 = log(p/q) (unbiased, can be negative); k2 = (log(p/q))^2 / 2; k3 = (q/p - 1) - log(q/p)
    (unbiased and never negative).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator {kind!r} is unknown; use one of {', '.join(KL_ESTIMATORS)}")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * KL on every response token, plus the sequence's score on its last response
    token (the EOS it emitted, or the last token of a cut-off response)."""
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values  # -1 for an empty response
    has_tokens = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss; also the fraction of tokens where clipping bit, and the approximate KL
    0.5 * E[(log ratio)^2] between the policy now and at rollout."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clip_fraction, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old ± clip) - R)^2); also the fraction clipped."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, clip_fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant."""
    var = masked_var(returns, mask)
    if var <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var)


class AdaptiveKL:
    """Ziegler et al. 2019: beta *= 1 + clip(KL / target - 1, ±0.2) * n / horizon after each batch of n samples.
    With `target=None` beta stays fixed."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n / self.horizon
