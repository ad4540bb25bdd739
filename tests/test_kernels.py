"""token_logprobs against a float64 reference, against TRL's per-token paths, and on its edge cases.

The Triton kernels are checked here too: directly on CUDA, and on CPU by re-running this file's Triton tests in a
subprocess with TRITON_INTERPRET=1 (Triton reads it at import, so it cannot be switched on inside this session).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lowtune.kernels import logprobs as kernel_module
from lowtune.kernels import token_logprobs

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
triton_here = pytest.mark.skipif(
    not (HAS_TRITON and (INTERPRET or torch.cuda.is_available())),
    reason="Triton kernels need CUDA; on CPU test_triton_kernels_in_interpreter runs them with TRITON_INTERPRET=1",
)

# Small shapes: V is not a multiple of the chunk unless said, so the last chunk is ragged.
CASES = {
    "ragged_chunk": dict(n=40, h=32, v=300, chunk=64),
    "whole_chunks": dict(n=40, h=32, v=256, chunk=64),
    "one_token": dict(n=1, h=32, v=300, chunk=64, values=2000),  # 62 draws suffice, and each is slow for its size
    "temperature": dict(n=40, h=32, v=300, chunk=64, temperature=0.7),
    "bias": dict(n=40, h=32, v=300, chunk=64, bias=True),
    "softcap_scale": dict(n=40, h=32, v=300, chunk=64, bias=True, softcap=3.0, logit_scale=0.5, temperature=1.3),
    # Every logit 12,800 + a spread of std ~11: exp overflows without the max taken out, and an entropy not centred on
    # it loses ~1e-3. Integer inputs make each logit exact in float32 (or TF32) in any summation order, so ours and
    # naive differ only in the softmax. (With real inputs of std 1e4 both round a near-tie row's gap by ~1e-3, and
    # which one rounds it worse is a coin flip that decided the entropy comparison: the case failed at random.)
    "large_logits": dict(n=40, h=32, v=300, chunk=64, offset=12800),
    "bf16": dict(n=40, h=32, v=300, chunk=64, dtype=torch.bfloat16),
    "batched_with_ignored": dict(n=(3, 13), h=32, v=300, chunk=64, ignored=0.3),
}


def naive(hidden, weight, labels, bias=None, temperature=1.0, softcap=None, logit_scale=1.0):
    """Full logits, log_softmax and gather in the inputs' dtype: the path token_logprobs replaces."""
    u = hidden @ weight.T
    if bias is not None:
        u = u + bias
    u = u * logit_scale
    if softcap is not None:
        u = softcap * torch.tanh(u / softcap)
    logprobs = (u / temperature).log_softmax(-1)
    valid = labels != -100
    logp = logprobs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return torch.where(valid, logp, 0), torch.where(valid, entropy, 0)


def make_inputs(case: dict, device: str = "cpu"):
    """Fresh random inputs, already rounded to the case's dtype (so float64 copies are exact)."""
    dtype = case.get("dtype", torch.float32)
    shape = case["n"] if isinstance(case["n"], tuple) else (case["n"],)
    h, v = case["h"], case["v"]
    if case.get("offset"):  # entries in [-2, 2], then column 0 adds the offset: every product and sum is exact
        weight = torch.randint(-2, 3, (v, h)).double()
        hidden = torch.randint(-2, 3, (*shape, h)).double()
        weight[:, 0], hidden[..., 0] = 1, case["offset"]
    else:
        weight = torch.randn(v, h, dtype=torch.float64) / h**0.5
        hidden = torch.randn(*shape, h, dtype=torch.float64) * 2.0
    bias = torch.randn(v, dtype=torch.float64) if case.get("bias") else None
    labels = torch.randint(0, v, shape)
    if case.get("ignored"):
        labels[torch.rand(shape) < case["ignored"]] = -100
    tensors = [x if x is None else x.to(dtype).to(torch.float64) for x in (hidden, weight, bias)]
    return (*tensors, labels.to(device))


MODES = {  # what needs a gradient: (hidden, head, entropy)
    "no_grad": (False, False, False),
    "logp_only": (True, False, False),  # frozen head: E_p[W] from the forward, no recompute
    "frozen_head": (True, False, True),  # + the entropy's gradient, by recompute
    "trainable_head": (True, True, True),
}


def run(fn, inputs, dtype, device, mode, grads_out):
    """Forward (+ backward of `sum(g_logp * logp) + sum(g_ent * entropy)`) in `dtype`; outputs and gradients."""
    hidden_grad, head_grad, entropy_grad = MODES[mode]
    hidden, weight, bias = (None if x is None else x.to(device, dtype, copy=True) for x in inputs[:3])
    hidden.requires_grad_(hidden_grad)
    weight.requires_grad_(head_grad)
    if bias is not None:
        bias.requires_grad_(head_grad)
    with torch.set_grad_enabled(hidden_grad):
        logp, entropy = fn(hidden, weight, inputs[3].to(device), bias)
    out = {"logp": logp, "entropy": entropy}
    if hidden_grad:
        g_logp, g_ent = (g.to(device) for g in grads_out)
        loss = (logp.double() * g_logp).sum()
        if entropy_grad:
            loss = loss + (entropy.double() * g_ent).sum()
        loss.backward()
        out["grad_hidden"] = hidden.grad
    if head_grad:
        out["grad_weight"] = weight.grad
        if bias is not None:
            out["grad_bias"] = bias.grad
    return {k: x.detach().double().cpu() for k, x in out.items()}


def check(case: dict, mode: str, backend: str, device: str = "cpu", values: int = 4000, factor: float = 1.25) -> None:
    """token_logprobs's error against float64 is at most (about) naive log_softmax's in the same dtype.

    Both errors are rounding noise of the same size (their median ratio is at most 1 in every case), so a strict
    `<=` on one draw would fail on a coin flip. The max abs error of each draw is averaged over enough fresh draws
    for `values` gradient entries, and ours may exceed naive's by `factor` (plus half an ulp of the values, for when
    naive's happens to be 0). Over 30,000 simulated runs of these cases the worst ratio was 1.18 for 2,000-4,000
    values, 1.7 for 500-1,000.
    """
    dtype = case.get("dtype", torch.float32)
    kw = {k: case[k] for k in ("temperature", "softcap", "logit_scale") if k in case}
    tokens = torch.Size(case["n"] if isinstance(case["n"], tuple) else (case["n"],)).numel()

    def ours(hidden, weight, labels, bias):
        return token_logprobs(
            hidden, weight, labels, bias=bias, return_entropy=True, chunk_size=case["chunk"], backend=backend, **kw
        )

    def reference(hidden, weight, labels, bias):
        return naive(hidden, weight, labels, bias, **kw)

    draws = max(1, round(min(values, case.get("values", values)) / (tokens * case["h"])))
    errors = {}  # name -> [sum of our max errors, of naive's, largest |value|]
    for _ in range(draws):
        inputs = make_inputs(case, device)
        grads_out = [torch.randn(inputs[3].shape, dtype=torch.float64) for _ in range(2)]
        exact = run(reference, inputs, torch.float64, "cpu", mode, grads_out)
        base = run(reference, inputs, dtype, device, mode, grads_out)
        got = run(ours, inputs, dtype, device, mode, grads_out)
        valid = inputs[3].cpu() != -100
        for name, ref in exact.items():
            assert torch.isfinite(got[name]).all(), f"{name} has NaN/inf"
            if name in ("logp", "entropy", "grad_hidden"):
                assert (got[name][~valid] == 0).all(), f"{name} is not 0 at ignored positions"
            ours_err, naive_err = ((x - ref).abs().max().item() for x in (got[name], base[name]))
            total = errors.setdefault(name, [0.0, 0.0, 0.0])
            total[0] += ours_err / draws
            total[1] += naive_err / draws
            total[2] = max(total[2], ref.abs().max().item())
    eps = torch.finfo(dtype).eps
    for name, (err, err_naive, largest) in errors.items():
        limit = factor * (err_naive + eps * max(1.0, largest) / 2)
        assert err <= limit, f"{name}: mean max error {err:.3g} vs naive {dtype} log_softmax's {err_naive:.3g}"


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_matches_float64_reference(case, mode):
    check(CASES[case], mode, backend="torch")


def test_token_blocks(monkeypatch):
    monkeypatch.setattr(kernel_module, "TOKEN_BLOCK", 16)
    for mode in MODES:
        check(dict(n=50, h=32, v=300, chunk=64), mode, backend="torch")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_is_bitwise_the_same_with_and_without_grad(case):
    """PPO compares log-probs taken without a gradient (the rollout) with the loss's: at the first update their
    ratio must be exactly 1, so the frozen-head forward, which also accumulates d logp / dh, must not round
    differently."""
    case = CASES[case]
    kw = {k: case[k] for k in ("temperature", "softcap", "logit_scale") if k in case}
    dtype = case.get("dtype", torch.float32)
    hidden, weight, bias, labels = make_inputs(case)
    hidden, weight, bias = (None if x is None else x.to(dtype) for x in (hidden, weight, bias))

    def forward(grad):
        h = hidden.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            return token_logprobs(h, weight, labels, bias=bias, return_entropy=True, chunk_size=case["chunk"], **kw)

    for without, with_grad in zip(forward(False), forward(True), strict=True):
        assert torch.equal(without, with_grad.detach())


def test_frozen_head_does_no_gradient_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the backward recomputed the logits for a frozen head")

    monkeypatch.setattr(kernel_module, "backward_torch", fail)
    hidden = torch.randn(8, 16, requires_grad=True)
    weight = torch.randn(100, 16)
    logp, entropy = token_logprobs(hidden, weight, torch.randint(0, 100, (8,)), return_entropy=True)
    (logp.sum() + entropy.detach().sum()).backward()
    assert weight.grad is None and hidden.grad is not None


def test_all_positions_ignored():
    hidden = torch.randn(2, 5, 16, requires_grad=True)
    labels = torch.full((2, 5), -100)
    logp, entropy = token_logprobs(hidden, torch.randn(50, 16), labels, return_entropy=True)
    assert logp.shape == entropy.shape == (2, 5)
    assert (logp == 0).all() and (entropy == 0).all()
    (logp.sum() + entropy.sum()).backward()
    assert (hidden.grad == 0).all()


def test_no_graph_without_grad():
    hidden = torch.randn(4, 16, requires_grad=True)
    with torch.no_grad():
        logp = token_logprobs(hidden, torch.randn(50, 16), torch.randint(0, 50, (4,)))
    assert logp.grad_fn is None and logp.dtype == torch.float32


def test_rejects_bad_arguments():
    hidden, weight, labels = torch.randn(4, 16), torch.randn(50, 16), torch.randint(0, 50, (4,))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, labels, temperature=0)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(hidden, weight, labels[:3])
    with pytest.raises(ValueError, match="weight"):
        token_logprobs(hidden, weight[:, :8], labels)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs(hidden, weight, labels, backend="cuda")


def test_default_backend_is_torch_on_every_device():
    # The Triton kernels have not run on a GPU yet: the default stays off them on CUDA too.
    for backend in (None, "auto"):
        for cuda, interpret in [(True, False), (False, False), (False, True)]:
            for installed in (True, False):
                chosen = kernel_module.select_backend(
                    backend, cuda=cuda, triton_installed=installed, interpret=interpret
                )
                assert chosen == "torch", (backend, cuda, interpret, installed)


def test_select_backend_explicit_choices():
    select = kernel_module.select_backend
    for cuda in (True, False):
        assert select("torch", cuda=cuda, triton_installed=True, interpret=False) == "torch"
    assert select("triton", cuda=True, triton_installed=True, interpret=False) == "triton"
    assert select("triton", cuda=False, triton_installed=True, interpret=True) == "triton"
    with pytest.raises(RuntimeError, match="pip install triton"):
        select("triton", cuda=True, triton_installed=False, interpret=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        select("triton", cuda=False, triton_installed=True, interpret=False)
    with pytest.raises(ValueError, match="backend must be"):
        select("cuda", cuda=True, triton_installed=True, interpret=False)


def test_default_backend_runs_the_torch_path(monkeypatch):
    chosen = []
    real = kernel_module.select_backend
    monkeypatch.setattr(kernel_module, "select_backend", lambda *a, **k: chosen.append(real(*a, **k)) or chosen[-1])
    token_logprobs(torch.randn(4, 16), torch.randn(50, 16), torch.randint(0, 50, (4,)))
    assert chosen == ["torch"]


def check_rejects_out_of_range_labels(backend, device="cpu"):
    """A label the head cannot score (>= V, or negative and not ignore_index) is an error, not a number."""
    v = 50
    hidden, weight = torch.randn(2, 4, 16, device=device), torch.randn(v, 16, device=device)
    for bad in (v, 99, -5):
        labels = torch.randint(0, v, (2, 4), device=device)
        labels[0, 0] = -100  # ignored positions are still fine beside the bad one
        labels[1, 2] = bad
        for grad in (False, True):
            with pytest.raises(ValueError, match=rf"label {bad} at position 6 .* outside .*\[0, {v}\)"):
                token_logprobs(hidden.clone().requires_grad_(grad), weight, labels, backend=backend)
    # -5 is fine when it is the ignore index; V - 1 and 0 are in range.
    labels = torch.tensor([[-5, 0, v - 1, 3], [1, 2, -5, 4]], device=device)
    logp = token_logprobs(hidden, weight, labels, ignore_index=-5, backend=backend)
    assert (logp[labels == -5] == 0).all() and (logp[labels != -5] < 0).all()


def test_rejects_out_of_range_labels():
    check_rejects_out_of_range_labels("torch")


def test_matches_trl_per_token_logprobs():
    """Same log-probs (and gradients, and entropy) as TRL 1.16's selective_log_softmax and ChunkedLogProbFunction."""
    pytest.importorskip("trl")
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import selective_log_softmax

    n, h, v, temperature = 48, 32, 500, 0.9
    hidden = torch.randn(n, h)
    weight = torch.randn(v, h) / h**0.5
    labels = torch.randint(0, v, (n,))
    g = torch.randn(n)

    def grad_and_values(fn):
        x = hidden.clone().requires_grad_()
        logp, entropy = fn(x)
        (logp * g).sum().backward()
        return logp.detach(), None if entropy is None else entropy.detach(), x.grad

    ours = grad_and_values(
        lambda x: token_logprobs(x, weight, labels, temperature=temperature, return_entropy=True, chunk_size=128)
    )
    trl_selective = grad_and_values(lambda x: (selective_log_softmax(x @ weight.T, labels, temperature), None))
    # What TRL's trainers call through add_fused_lm_head (its CPU path folds tiles in torch).
    trl_chunked = grad_and_values(
        lambda x: ChunkedLogProbFunction.apply(x, weight, None, labels, temperature, 128, None, 1.0)[:2]
    )
    for theirs in (trl_selective, trl_chunked):
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours[2], theirs[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], trl_chunked[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(HAS_TRITON, reason="triton is installed")
def test_triton_backend_needs_triton():
    with pytest.raises(RuntimeError, match="pip install triton"):
        token_logprobs(torch.randn(4, 16), torch.randn(50, 16), torch.randint(0, 50, (4,)), backend="triton")


@pytest.fixture
def small_triton_tiles(monkeypatch):
    # The interpreter runs each program in numpy: the smallest tiles tl.dot accepts keep it fast.
    if INTERPRET:
        triton_module = pytest.importorskip("lowtune.kernels.logprobs_triton")
        for name, value in dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=16, BLOCK=64).items():
            monkeypatch.setattr(triton_module, name, value)


TRITON_CASES = ["ragged_chunk", "one_token", "softcap_scale", "large_logits", "bf16", "batched_with_ignored"]


@triton_here
@pytest.mark.parametrize("case", TRITON_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_triton_backend(case, mode, small_triton_tiles):
    # no_grad: the fused _lse_kernel; otherwise _fold_kernel, and _grad_kernel for the recompute backward.
    # The interpreter is slow: fewer draws, so more noise, so a looser factor (see check).
    values, factor = (500, 3.0) if INTERPRET else (4000, 1.25)
    check(CASES[case], mode, backend="triton", device=TRITON_DEVICE, values=values, factor=factor)


@triton_here
def test_triton_backend_no_grad_and_all_ignored(small_triton_tiles):
    hidden = torch.randn(6, 16, device=TRITON_DEVICE)
    weight = torch.randn(70, 16, device=TRITON_DEVICE)
    labels = torch.randint(0, 70, (6,), device=TRITON_DEVICE)
    with torch.no_grad():
        got = token_logprobs(hidden, weight, labels, backend="triton")
    torch.testing.assert_close(got, naive(hidden, weight, labels)[0], atol=1e-5, rtol=1e-5)
    h = hidden.requires_grad_()
    logp = token_logprobs(h, weight, torch.full_like(labels, -100), backend="triton")
    logp.sum().backward()
    assert (logp == 0).all() and (h.grad == 0).all()


@triton_here
def test_triton_backend_rejects_out_of_range_labels(small_triton_tiles):
    check_rejects_out_of_range_labels("triton", device=TRITON_DEVICE)


def test_triton_kernels_in_interpreter():
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install triton): its kernels are not checked")
    if INTERPRET or torch.cuda.is_available():
        pytest.skip("the Triton tests run directly in this session")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton_backend"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
