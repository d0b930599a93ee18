"""Attention of a few selected queries over a blended KV cache, masked by true per-position causality.

CacheBlend recomputes a subset of tokens: their queries sit anywhere in the prompt, listed in any
order, and each must attend to exactly the keys at positions <= its own (and, with a sliding window,
> its own - window). That is NOT the bottom-right-aligned causal mask of a decode step: a query at
position 3 listed after one at position 40 still sees only keys 0..3.

Three implementations, one contract:
  `_selective_attention_kernel` / `selective_attention(impl="triton")`: flash-attention style, one
      program per (query block, query head), online softmax in fp32, GQA by head-index mapping;
  `selective_attention_torch`: the CPU path, per-block `scaled_dot_product_attention` over only the
      keys some query of the block can see;
  `selective_attention_ref`: dense masked softmax, the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triton_kernels._dispatch import (
    check_ndim,
    check_same_device,
    fall_back,
    jit,
    tl,
    triton,
    use_triton,
)

MAX_HEAD_DIM = 256  # the [BLOCK_M, head_dim] fp32 accumulator lives in registers; wider heads take torch
BLOCK_M = 64  # queries per Triton program
BLOCK_N = 64  # keys per inner-loop step
TORCH_BLOCK = 128  # queries per sdpa call on the torch path: smaller blocks skip more keys, cost more calls
LOG2E = 1.4426950408889634


@jit
def _selective_attention_kernel(
    q_ptr,  # *q: [n_q_heads, n_q, head_dim], last-dim stride 1
    k_ptr,  # *k: [n_kv_heads, n_kv, head_dim], q's dtype, last-dim stride 1
    v_ptr,  # *v: [n_kv_heads, n_kv, head_dim], q's dtype, last-dim stride 1
    out_ptr,  # *out: [n_q_heads, n_q, head_dim], q's dtype, last-dim stride 1
    q_pos_ptr,  # *q_pos: [n_q] int64, position of each query row (input order)
    kv_pos_ptr,  # *kv_pos: [n_kv] int64, position of each key row
    order_ptr,  # *order: [n_q] int64, query rows sorted by position; program m takes order[m*BLOCK_M:][:BLOCK_M]
    kv_lo_ptr,  # *kv_lo: [n_q_blocks] int64, first key row any query of the block may see (0 if unsorted)
    kv_hi_ptr,  # *kv_hi: [n_q_blocks] int64, one past the last such key row (n_kv if unsorted)
    n_q,  # int: query rows
    head_dim,  # int: valid lanes of the last dim
    group,  # int: n_q_heads // n_kv_heads; query head h reads kv head h // group
    window,  # int: keys need kv_pos > q_pos - window (read only when HAS_WINDOW)
    qk_scale,  # float: softmax scale * log2(e), so the kernel can use exp2
    q_stride_h,  # int: elements between heads of q
    q_stride_t,  # int: elements between rows of q
    k_stride_h,  # int: elements between heads of k
    k_stride_t,  # int: elements between rows of k
    v_stride_h,  # int: elements between heads of v
    v_stride_t,  # int: elements between rows of v
    out_stride_h,  # int: elements between heads of out
    out_stride_t,  # int: elements between rows of out
    HAS_WINDOW: tl.constexpr,  # bool: apply the sliding-window lower bound
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (tf32 would miss the fp32 tolerance), else "tf32"
    BLOCK_M: tl.constexpr,  # queries per program (power of two, >= 16)
    BLOCK_N: tl.constexpr,  # keys per loop step (power of two, >= 16)
    BLOCK_D: tl.constexpr,  # next power of two >= max(head_dim, 16); lanes >= head_dim are masked
):
    # grid: (cdiv(n_q, BLOCK_M), n_q_heads)
    pid_m = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // group
    m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] slots in position order
    m_ok = m < n_q
    rows = tl.load(order_ptr + m, mask=m_ok, other=0)  # [BLOCK_M] query rows in q / out
    q_pos = tl.load(q_pos_ptr + rows, mask=m_ok, other=0)  # [BLOCK_M]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_ok = d < head_dim
    q = tl.load(
        q_ptr + head * q_stride_h + rows[:, None] * q_stride_t + d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    kv_lo = tl.load(kv_lo_ptr + pid_m)
    kv_hi = tl.load(kv_hi_ptr + pid_m)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max of scaled scores (log2 units)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # running numerator @ v
    k_head = k_ptr + kv_head * k_stride_h
    v_head = v_ptr + kv_head * v_stride_h
    for start in range(kv_lo, kv_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key rows
        n_ok = n < kv_hi
        kv_pos = tl.load(kv_pos_ptr + n, mask=n_ok, other=0)  # [BLOCK_N]
        k_t = tl.load(
            k_head + n[None, :] * k_stride_t + d[:, None],
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N] fp32
        visible = n_ok[None, :] & (kv_pos[None, :] <= q_pos[:, None])  # [BLOCK_M, BLOCK_N]
        if HAS_WINDOW:
            visible = visible & (kv_pos[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_M]
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet: no NaN
        p = tl.exp2(s - m_safe[:, None])  # [BLOCK_M, BLOCK_N]; masked scores give exactly 0
        alpha = tl.exp2(m_i - m_safe)  # [BLOCK_M] rescale of what was accumulated so far
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_head + n[:, None] * v_stride_t + d[None, :],
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # padded rows only: every real query sees a key
    out = acc / l_safe[:, None]  # [BLOCK_M, BLOCK_D]
    tl.store(
        out_ptr + head * out_stride_h + rows[:, None] * out_stride_t + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )


def selective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    kv_pos: torch.Tensor,
    scale: float,
    window: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """softmax(scale * q.k) @ v over exactly the keys with q_pos - window < kv_pos <= q_pos.

    q: [n_q_heads, n_q, head_dim], k, v: [n_kv_heads, n_kv, head_dim] (same float dtype,
    n_q_heads % n_kv_heads == 0: query head h reads kv head h // (n_q_heads // n_kv_heads)),
    q_pos: [n_q] int64 in any order, kv_pos: [n_kv] int64. Returns [n_q_heads, n_q, head_dim] in q.dtype.
    Every query must see at least one key (the caller guarantees it).
    Triton path: skips key blocks outside a query block's reach when kv_pos is sorted (checked on the
    device, no sync); falls back to the torch path when a last dim is not contiguous or
    head_dim > MAX_HEAD_DIM. Torch path: see `selective_attention_torch`.
    """
    _check(q, k, v, q_pos, kv_pos, window)
    if not use_triton(impl, q, k, v, q_pos, kv_pos):
        return selective_attention_torch(q, k, v, q_pos, kv_pos, scale, window)
    n_q_heads, n_q, head_dim = q.shape
    n_kv_heads, n_kv, _ = k.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or head_dim > MAX_HEAD_DIM:
        fall_back("selective_attention", f"strides {q.stride()} {k.stride()} {v.stride()}, head_dim {head_dim}")
        return selective_attention_torch(q, k, v, q_pos, kv_pos, scale, window)

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [n_q_heads, n_q, head_dim]
    if out.numel() == 0:
        return out
    order, kv_lo, kv_hi = _block_key_ranges(q_pos, kv_pos, window, BLOCK_M)
    grid = (triton.cdiv(n_q, BLOCK_M), n_q_heads)
    _selective_attention_kernel[grid](
        q,
        k,
        v,
        out,
        q_pos.contiguous(),
        kv_pos.contiguous(),
        order,
        kv_lo,
        kv_hi,
        n_q,
        head_dim,
        n_q_heads // n_kv_heads,
        window or 0,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        HAS_WINDOW=window is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
    return out


def _block_key_ranges(
    q_pos: torch.Tensor, kv_pos: torch.Tensor, window: int | None, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort queries by position and bound the keys each block of `block` sorted queries may see.

    Returns order: [n_q] query rows by position, kv_lo, kv_hi: [cdiv(n_q, block)] int64 key-row
    ranges; [0, n_kv) when kv_pos is not sorted. Computed on q_pos's device without a host sync.
    """
    n_q, n_kv = q_pos.shape[0], kv_pos.shape[0]
    order = torch.argsort(q_pos, stable=True)  # [n_q]
    pos = q_pos[order]  # [n_q] non-decreasing
    first = pos[::block]  # [n_blocks] smallest position of each block
    last_row = torch.arange(block - 1, n_q + block - 1, block, device=pos.device).clamp_(max=n_q - 1)
    last = pos[last_row]  # [n_blocks] largest position of each block
    kv_sorted = (kv_pos[1:] >= kv_pos[:-1]).all()  # 0-dim bool on the device
    kv_hi = torch.where(kv_sorted, torch.searchsorted(kv_pos, last, right=True), n_kv)
    if window is None:
        kv_lo = torch.zeros_like(kv_hi)
    else:
        kv_lo = torch.where(kv_sorted, torch.searchsorted(kv_pos, first - window, right=True), 0)
    return order, kv_lo, kv_hi


def selective_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    kv_pos: torch.Tensor,
    scale: float,
    window: int | None = None,
    block: int = TORCH_BLOCK,
) -> torch.Tensor:
    """The torch path of `selective_attention` (same shapes, same contract).

    With kv_pos sorted, queries are sorted by position and split into blocks of at most `block`;
    each block runs `scaled_dot_product_attention` over only the key rows some query of the block can
    see, with the block's bool mask. Unsorted kv_pos falls back to `selective_attention_ref`.
    """
    _check(q, k, v, q_pos, kv_pos, window)
    n_q_heads, n_q, head_dim = q.shape
    n_kv_heads = k.shape[0]
    if n_q == 0 or not bool((kv_pos[1:] >= kv_pos[:-1]).all()):
        return selective_attention_ref(q, k, v, q_pos, kv_pos, scale, window)
    fast_cpu = window is None and _HAS_CPU_FLASH_LSE and q.device.type == "cpu"
    # Every query is one of the last keys' own tokens, in order (a prompt after reused KV, a chunked prefill):
    # two calls. (A run after other queries, as in a blend, measured no faster than the blocks below.)
    if fast_cpu and _is_causal_run(q_pos, kv_pos):
        return _causal_run(q, k, v, scale, k.shape[1] - n_q)
    order, kv_lo, kv_hi = _block_key_ranges(q_pos, kv_pos, window, block)
    pos = q_pos[order]  # [n_q] non-decreasing
    q_sorted = q[:, order]  # [n_q_heads, n_q, head_dim]
    out_sorted = torch.empty_like(q_sorted)  # [n_q_heads, n_q, head_dim]
    # Without a window, the keys before a block's first position are visible to all its queries: they take
    # an unmasked call (the fast kernel path), only the short tail up to the block's last position a mask.
    # split: the last key at or before the block's first position, which every query of the block sees.
    splits = None
    if fast_cpu:
        splits = (torch.searchsorted(kv_pos, pos[::block].contiguous(), right=True) - 1).clamp_(min=0).tolist()
    for b, (lo, hi) in enumerate(zip(kv_lo.tolist(), kv_hi.tolist(), strict=True)):
        s, e = b * block, min((b + 1) * block, n_q)
        pb = pos[s:e, None]  # [n_b, 1]
        if splits is not None:
            out_sorted[:, s:e] = _split_block(q_sorted[:, s:e], k, v, pb, kv_pos, scale, lo, max(lo, splits[b]), hi)
            continue
        kp = kv_pos[None, lo:hi]  # [1, hi - lo]
        mask = kp <= pb  # [n_b, hi - lo]
        if window is not None:
            mask &= kp > pb - window
        # 4-D inputs: CPU sdpa takes its flash kernel only for [batch, heads, tokens, head_dim] (3-D ran ~3x slower);
        # enable_gqa measured as fast as repeating k/v and faster than folding the group into the query axis.
        out_sorted[:, s:e] = F.scaled_dot_product_attention(
            q_sorted[None, :, s:e],  # [1, n_q_heads, n_b, head_dim]
            k[None, :, lo:hi],  # [1, n_kv_heads, hi - lo, head_dim]
            v[None, :, lo:hi],
            attn_mask=mask,
            scale=scale,
            enable_gqa=n_q_heads != n_kv_heads,
        )[0]
    out = torch.empty_like(q_sorted)
    out[:, order] = out_sorted  # back to the input order
    return out


_HAS_CPU_FLASH_LSE = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _is_causal_run(q_pos: torch.Tensor, kv_pos: torch.Tensor) -> bool:
    """Whether the queries are the last keys' own tokens, one to one and in order, at strictly increasing
    positions, after keys all at earlier positions: then each sees every key before the run plus a top-left
    causal square of the run's own keys. kv_pos is sorted (the caller checked)."""
    n_q, n_kv = q_pos.shape[0], kv_pos.shape[0]
    if n_q == 0 or n_q > n_kv or not torch.equal(q_pos, kv_pos[n_kv - n_q :]):
        return False
    tail = kv_pos[max(0, n_kv - n_q - 1) :]  # the run and the key before it
    return bool((tail[1:] > tail[:-1]).all())


def _causal_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, split: int) -> torch.Tensor:
    """Queries that are the last keys' own tokens, in order: keys [0, split) unmasked for all of them, the square
    [split, n_kv) top-left causal (the flash kernel's own mask, no mask tensor), merged by log-sum-exps.
    q: [n_q_heads, n_q, head_dim]; k, v: [n_kv_heads, split + n_q, head_dim] -> [n_q_heads, n_q, head_dim].
    The CPU flash kernel maps query head h to kv head h // group itself (GQA without a k/v copy)."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out, lse = op(q[None], k[None, :, split:], v[None, :, split:], 0.0, True, scale=scale)
    if split > 0:
        out_a, lse_a = op(q[None], k[None, :, :split], v[None, :, :split], 0.0, False, scale=scale)
        total = torch.logaddexp(lse_a, lse)  # [1, n_q_heads, n_q]
        out = out_a.float() * (lse_a - total).exp()[..., None] + out.float() * (lse - total).exp()[..., None]
    return out[0].to(q.dtype)


def _split_block(
    qb: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pb: torch.Tensor,
    kv_pos: torch.Tensor,
    scale: float,
    lo: int,
    split: int,
    hi: int,
) -> torch.Tensor:
    """One block of position-sorted queries: keys [lo, split) unmasked, [split, hi) causally masked, merged
    by their log-sum-exps. qb: [n_q_heads, n_b, head_dim]; pb: [n_b, 1] positions -> [n_q_heads, n_b, head_dim].

    The query-head group of each KV head is folded into the query axis (every query sees the same keys in
    the unmasked part), so no k/v copy is made for GQA.
    """
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    n_q_heads, n_b, d = qb.shape
    n_kv_heads = k.shape[0]
    group = n_q_heads // n_kv_heads
    qf = qb.reshape(n_kv_heads, group * n_b, d)[None]  # [1, n_kv_heads, group * n_b, head_dim]
    kp = kv_pos[split:hi]  # [hi - split]; starts with a key every query sees, so no row is empty
    neg = torch.zeros(n_b, hi - split, dtype=qb.dtype, device=qb.device)
    neg.masked_fill_(kp[None, :] > pb, float("-inf"))  # [n_b, hi - split] additive mask
    out_b, lse_b = op(qf, k[None, :, split:hi], v[None, :, split:hi], 0.0, False,
                      attn_mask=neg.repeat(group, 1), scale=scale)  # fmt: skip
    if split > lo:
        out_a, lse_a = op(qf, k[None, :, lo:split], v[None, :, lo:split], 0.0, False, scale=scale)
        lse = torch.logaddexp(lse_a, lse_b)  # [1, n_kv_heads, group * n_b]
        out_b = out_a * (lse_a - lse).exp()[..., None] + out_b * (lse_b - lse).exp()[..., None]
    return out_b[0].reshape(n_q_heads, n_b, d)


def selective_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    kv_pos: torch.Tensor,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Dense, obviously-correct reference of `selective_attention` (same shapes, same contract)."""
    group = q.shape[0] // k.shape[0]
    mask = kv_pos[None, :] <= q_pos[:, None]  # [n_q, n_kv]
    if window is not None:
        mask &= kv_pos[None, :] > q_pos[:, None] - window
    assert bool(mask.any(dim=1).all()), "every query must see at least one key"
    kf = k.float().repeat_interleave(group, dim=0)  # [n_q_heads, n_kv, head_dim]
    vf = v.float().repeat_interleave(group, dim=0)
    scores = scale * (q.float() @ kf.transpose(1, 2))  # [n_q_heads, n_q, n_kv]
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ vf).to(q.dtype)  # [n_q_heads, n_q, head_dim]


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, kv_pos: torch.Tensor, window: int | None
) -> None:
    """Raise ValueError, with the offending value, on inputs outside the contract."""
    check_ndim(3, q=q, k=k, v=v)
    check_ndim(1, q_pos=q_pos, kv_pos=kv_pos)
    check_same_device(q=q, k=k, v=v, q_pos=q_pos, kv_pos=kv_pos)
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"head_dim differs: q {tuple(q.shape)} vs k {tuple(k.shape)}")
    if k.shape[0] == 0 or q.shape[0] % k.shape[0]:
        raise ValueError(f"n_q_heads {q.shape[0]} is not a multiple of n_kv_heads {k.shape[0]}")
    if q_pos.dtype != torch.int64 or q_pos.shape != (q.shape[1],):
        raise ValueError(f"q_pos must be int64 [{q.shape[1]}], got {q_pos.dtype} {tuple(q_pos.shape)}")
    if kv_pos.dtype != torch.int64 or kv_pos.shape != (k.shape[1],):
        raise ValueError(f"kv_pos must be int64 [{k.shape[1]}], got {kv_pos.dtype} {tuple(kv_pos.shape)}")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    if q.shape[1] and not k.shape[1]:
        raise ValueError(f"{q.shape[1]} queries but no keys")
