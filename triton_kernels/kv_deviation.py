"""Per-token squared deviation between two KV tensors: CacheBlend's score for which tokens to recompute.

out[t] = sum over heads h and dims d of (new[h, t, d] - old[h, t, d])^2, accumulated in fp32.
"""

from __future__ import annotations

import torch

from triton_kernels._dispatch import (
    check_ndim,
    check_same_device,
    fall_back,
    jit,
    tl,
    triton,
    use_triton,
)

MAX_HEAD_DIM = 512  # one [BLOCK_T, head_dim] tile per head per program; wider heads take the torch path
BLOCK_T = 32  # tokens per program


@jit
def _kv_deviation_kernel(
    new_ptr,  # *new: [n_heads, n_tokens, head_dim], last-dim stride 1
    old_ptr,  # *old: [n_heads, n_tokens, head_dim], new's dtype, last-dim stride 1
    out_ptr,  # *out: [n_tokens] fp32, contiguous
    n_heads,  # int: heads summed over
    n_tokens,  # int: tokens per head
    head_dim,  # int: valid lanes of the last dim
    new_stride_h,  # int: elements between heads of new
    new_stride_t,  # int: elements between tokens of new
    old_stride_h,  # int: elements between heads of old
    old_stride_t,  # int: elements between tokens of old
    BLOCK_T: tl.constexpr,  # tokens per program (power of two)
    BLOCK_D: tl.constexpr,  # next power of two >= head_dim; lanes >= head_dim are masked
):
    # grid: (cdiv(n_tokens, BLOCK_T),); one program sums BLOCK_T tokens over every head.
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    t_ok = t < n_tokens
    mask = t_ok[:, None] & (d < head_dim)[None, :]  # [BLOCK_T, BLOCK_D]
    new_tile = new_ptr + t[:, None] * new_stride_t + d[None, :]  # [BLOCK_T, BLOCK_D] pointers, head 0
    old_tile = old_ptr + t[:, None] * old_stride_t + d[None, :]
    acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for _ in range(n_heads):
        x = tl.load(new_tile, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_D]
        y = tl.load(old_tile, mask=mask, other=0.0).to(tl.float32)
        diff = x - y
        acc += tl.sum(diff * diff, axis=1)  # [BLOCK_T]
        new_tile += new_stride_h  # pointer arithmetic is 64-bit: no overflow on big strides
        old_tile += old_stride_h
    tl.store(out_ptr + t, acc, mask=t_ok)


def kv_deviation(new: torch.Tensor, old: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Sum of squared differences per token.

    new, old: [n_heads, n_tokens, head_dim], same float dtype. Returns [n_tokens] fp32.
    Triton path falls back to torch when a last dim is not contiguous or head_dim > MAX_HEAD_DIM.
    """
    check_ndim(3, new=new, old=old)
    check_same_device(new=new, old=old)
    if new.shape != old.shape:
        raise ValueError(f"new and old shapes differ: {tuple(new.shape)} vs {tuple(old.shape)}")
    if new.dtype != old.dtype or not new.is_floating_point():
        raise ValueError(f"new and old must share one float dtype, got {new.dtype} and {old.dtype}")
    if not use_triton(impl, new, old):
        return kv_deviation_ref(new, old)
    n_heads, n_tokens, head_dim = new.shape
    if new.stride(-1) != 1 or old.stride(-1) != 1 or head_dim > MAX_HEAD_DIM:
        fall_back("kv_deviation", f"strides {new.stride()} / {old.stride()}, head_dim {head_dim}")
        return kv_deviation_ref(new, old)

    out = torch.empty(n_tokens, dtype=torch.float32, device=new.device)  # [n_tokens]
    if n_tokens == 0:
        return out
    if n_heads == 0 or head_dim == 0:
        return out.zero_()
    grid = (triton.cdiv(n_tokens, BLOCK_T),)
    _kv_deviation_kernel[grid](
        new,
        old,
        out,
        n_heads,
        n_tokens,
        head_dim,
        new.stride(0),
        new.stride(1),
        old.stride(0),
        old.stride(1),
        BLOCK_T=BLOCK_T,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out


def kv_deviation_ref(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference of `kv_deviation` (same shapes, same contract)."""
    diff = new.float() - old.float()  # [n_heads, n_tokens, head_dim] fp32
    return (diff * diff).sum(dim=(0, 2))  # [n_tokens]
