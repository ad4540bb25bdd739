"""Triton kernels for `token_logprobs` (CUDA; CPU under `TRITON_INTERPRET=1`), fp32 math whatever the input dtype.

Imported by logprobs.py on first use only, so Triton stays optional.

- `_lse_kernel`, for forwards without a backward (reference models, scoring): fully fused. Each program owns a
  block of tokens and a slice of the vocabulary, makes its logit tiles with `tl.dot` over H and folds them into
  online max / sum-exp / entropy statistics (Milakov & Gimelshein, 2018); logits never reach global memory. The
  vocabulary is split across programs so that a few hundred tokens still fill the GPU; torch merges the splits.
- `_fold_kernel`, for forwards with a backward: cuBLAS makes a chunk of logits, the kernel folds it into the
  running statistics and writes `e^(z_v - m) dz/du_v` for v != y, which cuBLAS multiplies by that chunk of W into
  the frozen-head gradient accumulator (see logprobs.py). Two GEMMs in all, as for naive logits.
- `_grad_kernel`, for the recompute backward (trainable head, entropy gradient): turns a chunk of logits into
  dL/du, for cuBLAS to multiply by W and by hidden.

The host code mirrors `forward_torch` / `backward_torch` in logprobs.py, which document the math.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Triton 3.9's interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584, unsupported upstream):
# there, and only there, bf16 tiles are upcast before the dot.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Vocabulary entries per chunk for the cuBLAS + fold path (the [N, chunk] fp32 tile).
CHUNK_SIZE = 8192
# Fused forward tiles; 16 is the smallest tile tl.dot accepts.
BLOCK_N, BLOCK_V, BLOCK_H = 64, 128, 64
# Elements per program in the element-wise kernels.
BLOCK = 1024


@triton.jit
def _transform(u, scale, softcap, temperature, HAS_SOFTCAP: tl.constexpr):
    # z = f(u) and the non-constant part of dz/du, in the order of logprobs.Transform
    z = u * scale
    dz = 1.0
    if HAS_SOFTCAP:
        # tanh(x) = 2 sigmoid(2x) - 1: tl has no tanh on every backend
        t = 2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0
        z = softcap * t
        dz = 1.0 - t * t
    return z / temperature, dz


@triton.jit
def _lse_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    labels_ptr,
    m_ptr,
    s_ptr,
    t_ptr,
    zy_ptr,
    n_rows,
    n_vocab,
    n_hidden,
    v_per_split,
    stride_h,
    stride_w,
    scale,
    softcap,
    temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    IEEE: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    v_start = split * v_per_split
    v_end = tl.minimum(v_start + v_per_split, n_vocab)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), -float("inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    zy = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, n_hidden, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < n_hidden
            a = tl.load(
                h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            w = tl.load(
                w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :],
                mask=col_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if DOT_F32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            if IEEE:  # fp32 inputs: no TF32, to match torch's fp32 matmul
                acc = tl.dot(a, tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, tl.trans(w), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        z, _ = _transform(acc, scale, softcap, temperature, HAS_SOFTCAP)
        zy += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        z = tl.where(col_ok[None, :], z, -float("inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        r = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        if HAS_ENTROPY:
            # t = sum e^(z-m) (z-m): centred on the running max, shifted when it grows
            zc = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            # m is -inf before the first tile, where s = 0: keep inf * 0 out
            shift = (m_new - tl.where(s > 0, m, m_new)) * s
            t = (t - shift) * r + tl.sum(e * zc, axis=1)
        s = s * r + tl.sum(e, axis=1)
        m = m_new
    out = split * n_rows + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(zy_ptr + out, zy, mask=row_ok)
    if HAS_ENTROPY:
        tl.store(t_ptr + out, t, mask=row_ok)


@triton.jit
def _fold_kernel(
    u_ptr,
    e_ptr,
    b_ptr,
    labels_ptr,
    m_ptr,
    s_ptr,
    sr_ptr,
    t_ptr,
    zy_ptr,
    r_ptr,
    vocab_start,
    n_cols,
    stride_u,
    stride_e,
    scale,
    softcap,
    temperature,
    FIRST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per token: two passes over its row of the chunk (max, then exp).
    row = tl.program_id(0).to(tl.int64)
    u_row = u_ptr + row * stride_u
    m_chunk = tl.full((BLOCK,), -float("inf"), tl.float32)
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = cols < n_cols
        z = tl.load(u_row + cols, mask=ok, other=0.0)
        if HAS_BIAS:
            z += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        z, _ = _transform(z, scale, softcap, temperature, HAS_SOFTCAP)
        m_chunk = tl.maximum(m_chunk, tl.where(ok, z, -float("inf")))
    m_new = tl.max(m_chunk, axis=0)
    if FIRST:
        m = m_new
        s = 0.0
        sr = 0.0
        t = 0.0
    else:
        m = tl.load(m_ptr + row)
        s = tl.load(s_ptr + row)
        sr = tl.load(sr_ptr + row)
        m_new = tl.maximum(m, m_new)
        if HAS_ENTROPY:
            t = tl.load(t_ptr + row)
            t = (t - (m_new - m) * s) * tl.exp(m - m_new)
        s = s * tl.exp(m - m_new)
        sr = sr * tl.exp(m - m_new)
    local = tl.load(labels_ptr + row) - vocab_start
    s_vec = tl.zeros((BLOCK,), tl.float32)
    sr_vec = tl.zeros((BLOCK,), tl.float32)
    t_vec = tl.zeros((BLOCK,), tl.float32)
    zy_vec = tl.zeros((BLOCK,), tl.float32)
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = cols < n_cols
        z = tl.load(u_row + cols, mask=ok, other=0.0)
        if HAS_BIAS:
            z += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        z, dz = _transform(z, scale, softcap, temperature, HAS_SOFTCAP)
        is_label = cols == local
        zy_vec += tl.where(is_label, z, 0.0)
        zc = z - m_new
        e = tl.where(ok, tl.exp(zc), 0.0)
        s_vec += e
        if HAS_ENTROPY:
            t_vec += e * tl.where(ok, zc, 0.0)
        # The label's term stays out of E_p[W] and s' (see forward_torch), and so out of e.
        e = tl.where(is_label, 0.0, e)
        sr_vec += e
        e = e * dz
        tl.store(e_ptr + row * stride_e + cols, e.to(e_ptr.dtype.element_ty), mask=ok)
    if (local >= 0) & (local < n_cols):
        tl.store(zy_ptr + row, tl.sum(zy_vec, axis=0))
    tl.store(m_ptr + row, m_new)
    tl.store(s_ptr + row, s + tl.sum(s_vec, axis=0))
    tl.store(sr_ptr + row, sr + tl.sum(sr_vec, axis=0))
    if HAS_ENTROPY:
        tl.store(t_ptr + row, t + tl.sum(t_vec, axis=0))
    if FIRST:
        tl.store(r_ptr + row, 1.0)
    else:
        tl.store(r_ptr + row, tl.exp(m - m_new))


@triton.jit
def _grad_kernel(
    u_ptr,
    g_out_ptr,
    b_ptr,
    labels_ptr,
    m_ptr,
    log_s_ptr,
    ent_ptr,
    g_logp_ptr,
    g_ent_ptr,
    vocab_start,
    n_cols,
    stride_u,
    stride_g,
    scale,
    softcap,
    temperature,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_LOGP_GRAD: tl.constexpr,
    HAS_ENTROPY_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # dL/dz_v = g_logp (1[v = y] - p_v) - g_ent p_v (log p_v + H)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    z = tl.load(u_ptr + row * stride_u + cols, mask=ok, other=0.0)
    if HAS_BIAS:
        z += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    z, dz = _transform(z, scale, softcap, temperature, HAS_SOFTCAP)
    logp = (z - tl.load(m_ptr + row)) - tl.load(log_s_ptr + row)
    coef = tl.zeros((BLOCK,), tl.float32)
    if HAS_ENTROPY_GRAD:
        coef += tl.load(g_ent_ptr + row) * (logp + tl.load(ent_ptr + row))
    grad = tl.zeros((BLOCK,), tl.float32)
    if HAS_LOGP_GRAD:
        g = tl.load(g_logp_ptr + row)
        coef += g
        grad = tl.where(cols == tl.load(labels_ptr + row) - vocab_start, g, 0.0)
    grad = (grad - tl.exp(logp) * coef) * dz
    tl.store(g_out_ptr + row * stride_g + cols, grad.to(g_out_ptr.dtype.element_ty), mask=ok)


def _half_mm_fp32() -> bool:
    # `mm(..., out_dtype=float32)` (torch >= 2.8) keeps bf16/fp16 GEMMs in fp32
    # without upcasting W; it exists for CUDA only.
    return hasattr(torch.ops.aten.mm, "dtype")


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` with fp32 output, without rounding a bf16/fp16 product to bf16/fp16."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and _half_mm_fp32():
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`acc += a @ b` for an fp32 `acc`."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and _half_mm_fp32():
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _common(hidden, weight, bias, xf):
    # tl.dot and the GEMMs want one dtype: promote (never round fp32 down to bf16).
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    h = hidden.to(dtype).contiguous()
    w = weight.to(dtype).contiguous()
    b = None if bias is None else bias.contiguous()
    args = {
        "scale": xf.scale,
        "softcap": xf.softcap or 1.0,
        "temperature": xf.temperature,
        "HAS_BIAS": b is not None,
        "HAS_SOFTCAP": xf.softcap is not None,
    }
    return h, w, b, args


def forward_fused(hidden, weight, bias, labels, xf, want_entropy):
    """m, log s, z_y and entropy (or None) from the fused `_lse_kernel`: for forwards without a backward.

    With a backward, `forward` is used instead: it makes the logits with the same GEMM as the backward's
    recomputation, so that the two agree bit for bit (with logits of 1e4, a last-bit difference would move p by
    1e-3 where the gradient is 1 - p).
    """
    h, w, b, args = _common(hidden, weight, bias, xf)
    n, vocab = h.shape[0], w.shape[0]
    f32 = {"dtype": torch.float32, "device": h.device}
    if n == 0:
        empty = torch.zeros(0, **f32)
        return empty, empty, empty, empty if want_entropy else None
    # Enough vocabulary splits for ~4 programs per SM, each a whole number of BLOCK_V.
    n_blocks = triton.cdiv(n, BLOCK_N)
    v_blocks = triton.cdiv(vocab, BLOCK_V)
    splits = max(1, min(v_blocks, 4 * _sm_count(h.device) // n_blocks))
    v_per_split = triton.cdiv(v_blocks, splits) * BLOCK_V
    splits = triton.cdiv(vocab, v_per_split)  # so that no split is empty
    m, s, t, zy = (torch.empty(splits, n, **f32) for _ in range(4))
    _lse_kernel[(n_blocks, splits)](
        h, w, torch.empty(1, **f32) if b is None else b, labels.contiguous(), m, s, t, zy,
        n, vocab, h.shape[1], v_per_split, h.stride(0), w.stride(0),
        HAS_ENTROPY=want_entropy, IEEE=h.dtype == torch.float32, DOT_F32=_INTERPRET and h.dtype == torch.bfloat16,
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, **args,
    )  # fmt: skip
    # Merge the splits: the same rescaling as within one, between programs. Only one split saw the label.
    m_all = m.amax(0)
    scale = torch.exp(m - m_all)
    s_all = (s * scale).sum(0)
    ent = None
    if want_entropy:
        t_all = (scale * (t + (m - m_all) * s)).sum(0)
        ent = s_all.log() - t_all / s_all
    return m_all, s_all.log(), zy.sum(0), ent


def forward(hidden, weight, bias, labels, xf, chunk_size, want_entropy, accumulate):
    """m, log s, z_y, entropy (or None) and E_p[dz/du W] (or None), as `forward_torch`: cuBLAS + `_fold_kernel`."""
    h, w, b, args = _common(hidden, weight, bias, xf)
    n, vocab = h.shape[0], w.shape[0]
    f32 = {"dtype": torch.float32, "device": h.device}
    if n == 0:
        empty = torch.zeros(0, **f32)
        ew = torch.zeros(h.shape, **f32) if accumulate else None
        return empty, empty, empty, empty if want_entropy else None, ew
    labels = labels.contiguous()
    dummy = torch.empty(1, **f32)
    chunk_size = chunk_size or CHUNK_SIZE
    m, s, s_rest, t, zy, r = (torch.zeros(n, **f32) for _ in range(6))
    ew = torch.zeros(h.shape, **f32) if accumulate else None
    # e feeds the E_p[W] GEMM, so it takes the inputs' dtype (bf16 tensor cores, fp32 accumulation).
    e = h.new_empty(n, min(chunk_size, vocab))
    for v0 in range(0, vocab, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        u = _mm_fp32(h, w[v0:v1].t())
        _fold_kernel[(n,)](
            u, e, dummy if b is None else b[v0:v1], labels, m, s, s_rest, t, zy, r,
            v0, v1 - v0, u.stride(0), e.stride(0),
            FIRST=v0 == 0, HAS_ENTROPY=want_entropy, BLOCK=BLOCK, **args,
        )  # fmt: skip
        if ew is not None:
            if v0 > 0:
                ew.mul_(r[:, None])
            _addmm_fp32(ew, e[:, : v1 - v0], w[v0:v1])
    if ew is not None:
        # d logp_y / du @ W = (1 - p_y) dz/du_y W_y - sum_{v != y} p_v dz/du_v W_v, with 1 - p_y = s' / s.
        dz_y = xf.grad_from_z(zy)
        q_y = s_rest / s if dz_y is None else s_rest / s * dz_y
        ew = torch.addcmul(ew.div_(-s[:, None]), q_y[:, None], w[labels].float())
    ent = s.log() - t / s if want_entropy else None
    return m, s.log(), zy, ent, ew


def backward(hidden, weight, bias, labels, stats, xf, chunk_size, grad_h, grad_w, grad_b):
    """Adds the chunked part of dL/du into the fp32 gradients, as `backward_torch`."""
    m, log_s, ent, g_logp, g_ent = stats
    h, w, b, args = _common(hidden, weight, bias, xf)
    n, vocab = h.shape[0], w.shape[0]
    if n == 0:
        return
    labels = labels.contiguous()
    chunk_size = chunk_size or CHUNK_SIZE
    dummy = m.new_empty(1)
    g = h.new_empty(n, min(chunk_size, vocab))
    for v0 in range(0, vocab, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        u = _mm_fp32(h, w[v0:v1].t())
        _grad_kernel[(n, triton.cdiv(v1 - v0, BLOCK))](
            u, g, dummy if b is None else b[v0:v1], labels, m, log_s,
            dummy if ent is None else ent,
            dummy if g_logp is None else g_logp.contiguous(),
            dummy if g_ent is None else g_ent.contiguous(),
            v0, v1 - v0, u.stride(0), g.stride(0),
            HAS_LOGP_GRAD=g_logp is not None, HAS_ENTROPY_GRAD=g_ent is not None,
            BLOCK=BLOCK, **args,
        )  # fmt: skip
        gc = g[:, : v1 - v0]
        if grad_h is not None:
            _addmm_fp32(grad_h, gc, w[v0:v1])
        if grad_w is not None:
            _addmm_fp32(grad_w[v0:v1], gc.t(), h)
        if grad_b is not None:
            grad_b[v0:v1] += gc.sum(0, dtype=torch.float32)
