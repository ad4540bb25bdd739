"""Per-token log-probabilities through the LM head without materializing the logits.

`token_logprobs(hidden, weight, labels)` equals
`(hidden @ weight.T).log_softmax(-1).gather(-1, labels[..., None])[..., 0]`, but walks the vocabulary in chunks
with an online log-sum-exp (Milakov & Gimelshein, 2018), so no `[N, V]` tensor is ever alive: the extra memory is
`O(N * chunk_size + N * H)`.

Frozen head (the LoRA case): when only `hidden` needs a gradient, the forward also accumulates
`sum_{v != y} p_v W_v`, rescaled online like flash-attention's output accumulator, and `1 - p_y`. As
`d logp_y / d h = ((1 - p_y) W_y - sum_{v != y} p_v W_v) / T`, the backward is then one `[N, H]` multiply: the
whole op costs two matmuls over the vocabulary, as many as naive logits forward + backward, and the backward never
touches W. (Summing over v != y, rather than writing `W_y - E_p[W]`, avoids cancellation as p_y nears 1.)

Trainable head, or a gradient through the entropy: the backward recomputes each chunk of logits and turns it into
the logits gradient, in place, like log_softmax's backward.

Logit transforms, in the order the model families apply them:
`z = softcap * tanh(logit_scale * (h W^T + b) / softcap) / temperature`. `logit_scale` is Cohere's `logit_scale`
(Granite's `1 / logits_scaling`), `softcap` is Gemma-2/3's `final_logit_softcapping`.

The log-sum-exp is kept as its two parts, the running max `m` and `log s` with `s = sum_v exp(z_v - m)`:
`logp = (z - m) - log s`. Rounding `m + log s` to fp32 first would cost the precision that `log s` has when the
logits are large (a nearly one-hot distribution, where `1 - p_y` is all the gradient there is).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

# Tokens per block and vocabulary entries per chunk on the torch path: one [1024, 4096] fp32 tile (16 MiB).
# benchmarks/results/logprobs.md measured these defaults only, no other sizes (2-core Xeon; fwd+bwd 1.48 s and
# 43 MiB against naive's 2.93 s and 2,304 MiB at the SmolLM2-135M shape).
TOKEN_BLOCK = 1024
CHUNK_SIZE = 4096


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label under `softmax(z)`, `z` the transformed logits of `hidden @ weight.T + bias`.

    hidden `[N, H]` or `[B, T, H]`, weight `[V, H]`, labels `[N]` or `[B, T]`. Returns float32 `logp` shaped like
    `labels`, and with `return_entropy` also the entropy of each position's distribution. Positions labelled
    `ignore_index` give 0 and no gradient; every other label must lie in `[0, V)` (ValueError otherwise: a label
    the head cannot score means the tokenizer and the LM head disagree). `chunk_size` is the vocabulary chunk (None:
    the backend's default). `backend` is "torch" (any device), "triton" (CUDA, or CPU under `TRITON_INTERPRET=1`),
    or None / "auto": see `select_backend`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} should be labels {tuple(labels.shape)} + (H,)")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} should be [V, H] with H = {hidden.shape[-1]}")
    backend = select_backend(
        backend,
        cuda=hidden.is_cuda,
        triton_installed=triton_available(),
        interpret=os.environ.get("TRITON_INTERPRET") == "1",
    )

    shape = labels.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    # Score only the positions that count: padding and prompts, often half of a DPO/GRPO batch, cost nothing.
    # Indexing keeps autograd connected even when no position is valid, so an all-ignored micro-batch still
    # backpropagates zeros.
    valid = labels != ignore_index
    vocab = weight.shape[0]
    out_of_range = valid & ((labels < 0) | (labels >= vocab))
    # Both flags in one transfer: on CUDA the range check adds no host sync to the one `compact` needed already.
    all_valid, any_out_of_range = torch.stack([valid.all(), out_of_range.any()]).tolist()
    if any_out_of_range:
        at = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"label {int(labels[at])} at position {at} (of {labels.numel()}, flattened) is outside the LM head's "
            f"vocabulary [0, {vocab}) and is not ignore_index ({ignore_index}): do the tokenizer and the model's "
            "head match?"
        )
    compact = not all_valid
    if compact:
        hidden, labels = hidden[valid], labels[valid]
    need_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    logp, entropy = TokenLogprobs.apply(
        hidden, weight, bias, labels, temperature, softcap, logit_scale, chunk_size, return_entropy, backend, need_grad
    )
    outputs = [logp, entropy] if return_entropy else [logp]
    if compact:
        outputs = [x.new_zeros(valid.shape).masked_scatter(valid, x) for x in outputs]
    outputs = [x.view(shape) for x in outputs]
    return (outputs[0], outputs[1]) if return_entropy else outputs[0]


def select_backend(backend: str | None, *, cuda: bool, triton_installed: bool, interpret: bool) -> str:
    """The backend `token_logprobs` runs, "torch" or "triton", for the `backend` argument and the tensors' device.

    None and "auto" pick the torch path on every device, CUDA included. The Triton kernels have been checked only
    under `TRITON_INTERPRET=1` on CPU tensors, and benchmarks/results/logprobs.json holds no CUDA measurement (its
    rows are CPU; the CUDA-only variants say "skipped"): auto is to pick Triton on CUDA only once
    tests/test_kernels.py passes on a GPU and benchmarks/logprobs.py measures it ahead of the torch path there.
    "triton" is there for whoever asks for it: it needs the triton package, and CUDA tensors unless
    `TRITON_INTERPRET=1` (`cuda`, `interpret`).
    """
    if backend is None or backend == "auto":
        return "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch', 'triton', 'auto' or None, got {backend!r}")
    if backend == "triton":
        if not triton_installed:
            raise RuntimeError("backend='triton' needs the triton package: pip install triton")
        if not (cuda or interpret):
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


@functools.cache
def triton_available() -> bool:
    """Whether the Triton path can be used (on CUDA, or on CPU with TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def _triton():
    # Imported on first use: importing Triton is slow, and TRITON_INTERPRET must be set before it is.
    from lowtune.kernels import logprobs_triton

    return logprobs_triton


class TokenLogprobs(torch.autograd.Function):
    """Chunked log-softmax + gather over `hidden @ weight.T`; see the module docstring."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, temperature, softcap, logit_scale, chunk_size, return_entropy, backend, grad
    ):
        # Entropy is often for logging only; without this, autograd would hand the backward a zero gradient for it
        # and we would pay a recompute for nothing.
        ctx.set_materialize_grads(False)
        need_h, need_w, need_b = (grad and x for x in ctx.needs_input_grad[:3])
        # The E_p[W] accumulator covers d logp / d hidden. A trainable head needs the recompute backward anyway,
        # which then yields d hidden too.
        accumulate = need_h and not (need_w or need_b)
        xf = Transform(temperature, softcap, logit_scale)
        if backend == "triton" and not grad:
            m, log_s, z_y, ent = _triton().forward_fused(hidden, weight, bias, labels, xf, return_entropy)
            dlogp_dh = None
        else:
            impl = _triton().forward if backend == "triton" else forward_torch
            m, log_s, z_y, ent, dlogp_dh = impl(
                hidden, weight, bias, labels, xf, chunk_size, return_entropy, accumulate
            )
        ctx.save_for_backward(hidden, weight, bias, labels, m, log_s, ent, dlogp_dh)
        ctx.xf, ctx.chunk_size, ctx.backend = xf, chunk_size, backend
        return (z_y - m) - log_s, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, labels, m, log_s, ent, dlogp_dh = ctx.saved_tensors
        xf = ctx.xf
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_logp = None if grad_logp is None else grad_logp.float()
        g_ent = None if grad_ent is None else grad_ent.float()
        # Gradients with respect to u = h W^T + b, in fp32, short of the constant factor xf.grad_scale.
        f32 = {"dtype": torch.float32, "device": hidden.device}
        grad_h = torch.zeros(hidden.shape, **f32) if need_h else None
        grad_w = torch.zeros(weight.shape, **f32) if need_w else None
        grad_b = torch.zeros(bias.shape, **f32) if need_b else None

        # d logp / d hidden from the forward, where it was accumulated there; else recompute the logits.
        if g_logp is not None and dlogp_dh is not None:
            grad_h.addcmul_(g_logp[:, None], dlogp_dh)
            g_logp = None
        if g_logp is not None or g_ent is not None:
            impl = _triton().backward if ctx.backend == "triton" else backward_torch
            stats = (m, log_s, ent, g_logp, g_ent)
            impl(hidden, weight, bias, labels, stats, xf, ctx.chunk_size, grad_h, grad_w, grad_b)

        grads = [grad_h, grad_w, grad_b]
        for g in grads:
            if g is not None and xf.grad_scale != 1.0:
                g.mul_(xf.grad_scale)
        grads = [None if g is None else g.to(x.dtype) for g, x in zip(grads, (hidden, weight, bias), strict=True)]
        return *grads, *([None] * 8)


class Transform:
    """Logit transform `z = f(u)` of `u = h W^T + b`: scale, softcap, then divide by the temperature.

    Applied to each tile in the order, and with the roundings, of the naive `(logits * scale ...) / temperature`:
    folding `scale / temperature` into `h` instead saves a pass over the tile but doubles the error of the result.
    `grad_scale` (`scale / temperature`) is the constant part of dz/du, applied once to the finished gradients.
    """

    def __init__(self, temperature: float, softcap: float | None, logit_scale: float):
        self.temperature = float(temperature)
        self.softcap = None if softcap is None else float(softcap)
        self.scale = float(logit_scale)
        self.grad_scale = self.scale / self.temperature

    def __call__(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`z = f(u)`, overwriting `u`, and the non-constant part of `dz/du` (None where there is none)."""
        dz = None
        if self.scale != 1.0:
            u.mul_(self.scale)
        if self.softcap is not None:
            u = u.div_(self.softcap).tanh_()
            dz = 1.0 - u * u
            u.mul_(self.softcap)
        if self.temperature != 1.0:
            u.div_(self.temperature)
        return u, dz

    def grad_from_z(self, z: torch.Tensor) -> torch.Tensor | None:
        """The non-constant part of `dz/du`, from `z` itself: with softcap c, `z = c tanh(.) / T`."""
        if self.softcap is None:
            return None
        t = z * (self.temperature / self.softcap)
        return 1.0 - t * t


def _chunk(h, weight, b, v0, v1, buf):
    """`h @ W[v0:v1].T + b[v0:v1]` in fp32 (a bf16/fp16 head is upcast chunk by chunk) into `buf`, and W[v0:v1].

    Writing every tile into one buffer keeps the footprint at one tile: fresh 16 MiB tiles fragment glibc's heap
    and leave several times that resident.
    """
    w = weight[v0:v1].float()
    u = buf[: h.shape[0] * (v1 - v0)].view(h.shape[0], v1 - v0)
    if b is None:
        return torch.mm(h, w.t(), out=u), w
    return torch.addmm(b[v0:v1], h, w.t(), out=u), w


def _buffers(h, vocab, chunk_size, count):
    """`count` flat fp32 buffers, each big enough for one [token block, chunk] tile."""
    return [h.new_empty(min(h.shape[0], TOKEN_BLOCK) * min(vocab, chunk_size)) for _ in range(count)]


def forward_torch(hidden, weight, bias, labels, xf, chunk_size, want_entropy, accumulate):
    """Returns m, log s, z_y, entropy (or None) and d logp_y / dh short of xf.grad_scale (or None), per token.

    Online over vocabulary chunks, per token, with m the running max: s = sum e^(z-m), t = sum e^(z-m) (z-m) and,
    for the gradient, a = sum_{v != y} e^(z_v-m) dz/du_v W_v and s' = sum_{v != y} e^(z_v-m). When m grows to m',
    all are rescaled by e^(m-m'), and t, centred on m, also shifts by -(m'-m) s. Centring on the max keeps t small
    for huge logits, where sum e^(z-m) z would cancel catastrophically in H = lse - E[z]; here H = log s - t / s.
    Leaving the label out of a and s' gives d logp_y / du = ((s'/s) dz/du_y W_y - a/s) with 1 - p_y = s'/s exact:
    W_y - E_p[W] would cancel catastrophically as p_y nears 1.
    """
    chunk_size = chunk_size or CHUNK_SIZE
    h, b = hidden.float(), None if bias is None else bias.float()
    n, vocab = h.shape[0], weight.shape[0]
    m, log_s, z_y = (h.new_empty(n) for _ in range(3))
    ent = h.new_empty(n) if want_entropy else None
    grad = torch.zeros_like(h) if accumulate else None
    q_y = h.new_empty(n) if accumulate else None  # 1 - p_y
    buf, e_buf = _buffers(h, vocab, chunk_size, 2) if want_entropy else (*_buffers(h, vocab, chunk_size, 1), None)
    for n0 in range(0, n, TOKEN_BLOCK):
        rows = slice(n0, n0 + TOKEN_BLOCK)
        a = None if grad is None else grad[rows]
        mb = s = t = sr = None
        for v0 in range(0, vocab, chunk_size):
            v1 = min(v0 + chunk_size, vocab)
            u, w = _chunk(h[rows], weight, b, v0, v1, buf)
            z, dz = xf(u)
            # The label's logit from the tile itself, so that it matches m bit for bit when it is the max.
            local = labels[rows] - v0
            inside = (local >= 0) & (local < v1 - v0)
            label_col = local.clamp(0, v1 - v0 - 1)[:, None]
            picked = z.gather(1, label_col)[:, 0]
            z_y[rows] = picked if v0 == 0 else torch.where(inside, picked, z_y[rows])
            m_new = z.amax(1) if mb is None else torch.maximum(mb, z.amax(1))
            z.sub_(m_new[:, None])
            e = torch.exp(z, out=e_buf[: z.numel()].view_as(z)) if want_entropy else z.exp_()
            t_chunk = z.mul_(e).sum(1) if want_entropy else 0.0
            # Summed as without a gradient, so that logp is bitwise the same either way (PPO's first ratio is 1).
            s_chunk = e.sum(1)
            if a is not None:  # the label's term leaves e here, for the sums without it
                e.scatter_(1, label_col, e.gather(1, label_col) * ~inside[:, None])
                rest = e.sum(1)
            if mb is None:
                s, t, sr = s_chunk, t_chunk, None if a is None else rest
            else:
                r = torch.exp(mb - m_new)
                if want_entropy:
                    t = (t - (m_new - mb) * s).mul_(r).add_(t_chunk)
                s = s.mul_(r).add_(s_chunk)
                if a is not None:
                    sr = sr.mul_(r).add_(rest)
                    a.mul_(r[:, None])
            if a is not None:
                a.addmm_(e if dz is None else e.mul_(dz), w)
            mb = m_new
        m[rows], log_s[rows] = mb, s.log()
        if want_entropy:
            ent[rows] = log_s[rows] - t / s
        if a is not None:
            q_y[rows] = sr / s
            a.div_(s[:, None])
    if grad is not None:
        dz_y = xf.grad_from_z(z_y)
        grad = torch.addcmul(grad.neg_(), (q_y if dz_y is None else q_y * dz_y)[:, None], weight[labels].float())
    return m, log_s, z_y, ent, grad


def backward_torch(hidden, weight, bias, labels, stats, xf, chunk_size, grad_h, grad_w, grad_b):
    """Adds dL/du @ W (and dL/du^T @ hidden, sum dL/du), recomputed chunk by chunk, into the fp32 gradients.

    dL/dz_v = g_logp (1[v = y] - p_v) - g_ent p_v (log p_v + H), since d H / d z_v = -p_v (log p_v + H).
    """
    m, log_s, ent, g_logp, g_ent = stats
    chunk_size = chunk_size or CHUNK_SIZE
    h, b = hidden.float(), None if bias is None else bias.float()
    n, vocab = h.shape[0], weight.shape[0]
    x = None if grad_w is None else hidden.float()
    buf, p_buf = _buffers(h, vocab, chunk_size, 2)
    for n0 in range(0, n, TOKEN_BLOCK):
        rows = slice(n0, n0 + TOKEN_BLOCK)
        coef = torch.zeros_like(m[rows]) if g_logp is None else g_logp[rows]
        for v0 in range(0, vocab, chunk_size):
            v1 = min(v0 + chunk_size, vocab)
            u, w = _chunk(h[rows], weight, b, v0, v1, buf)
            z, dz_du = xf(u)
            logp = z.sub_(m[rows, None]).sub_(log_s[rows, None])
            p = torch.exp(logp, out=p_buf[: logp.numel()].view_as(logp))
            if g_ent is None:
                grad = p.mul_(-coef[:, None])
            else:
                inner = logp.add_(ent[rows, None]).mul_(g_ent[rows, None])
                grad = inner.add_(coef[:, None]).mul_(p).neg_()
            if g_logp is not None:
                # The one-hot part in the tile, as log_softmax's backward does: g - p_y g in one rounding.
                local = labels[rows] - v0
                inside = (local >= 0) & (local < v1 - v0)
                grad.scatter_add_(1, local.clamp(0, v1 - v0 - 1)[:, None], (coef * inside)[:, None])
            if dz_du is not None:
                grad.mul_(dz_du)
            if grad_h is not None:
                grad_h[rows].addmm_(grad, w)
            if grad_w is not None:
                grad_w[v0:v1].addmm_(grad.t(), x[rows])
            if grad_b is not None:
                grad_b[v0:v1] += grad.sum(0)
