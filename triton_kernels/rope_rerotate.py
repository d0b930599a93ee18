"""Re-rotate post-RoPE keys by a per-token position delta (moving a cached chunk to a new offset).

RoPE rotates each frequency pair of a key at position p by the angle p * inv_freq[i], so a key cached
for position p moves to position p + d by one more rotation through d * inv_freq[i]. The angle table
is computed in float64 (|d| * inv_freq can be large, and float32 loses the phase), cos/sin and the
rotation in float32, the result cast back to k's dtype.

Pair layouts:
  half-split (Llama/HF, interleaved=False): pair i is (x[i], x[i + D/2]);
  interleaved (GPT-J style, interleaved=True): pair i is (x[2i], x[2i + 1]).
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

MAX_HEAD_DIM = 512  # one [BLOCK_T, head_dim / 2] tile per program; wider heads take the torch path
BLOCK_T = 32  # tokens per program


@jit
def _rope_rerotate_kernel(
    k_ptr,  # *k: [n_heads, n_tokens, head_dim], any float dtype, last-dim stride 1
    out_ptr,  # *out: [n_heads, n_tokens, head_dim], k's dtype, last-dim stride 1
    delta_ptr,  # *delta: [n_tokens] int64, contiguous
    inv_freq_ptr,  # *inv_freq: [head_dim // 2] fp32, contiguous
    n_tokens,  # int: tokens per head
    half,  # int: head_dim // 2, the number of rotation pairs
    k_stride_h,  # int: elements between heads of k
    k_stride_t,  # int: elements between tokens of k
    out_stride_h,  # int: elements between heads of out
    out_stride_t,  # int: elements between tokens of out
    INTERLEAVED: tl.constexpr,  # bool: pairs (2i, 2i+1) instead of (i, i + half)
    BLOCK_T: tl.constexpr,  # tokens per program (power of two)
    BLOCK_HALF: tl.constexpr,  # next power of two >= half; lanes >= half are masked
):
    # grid: (cdiv(n_tokens, BLOCK_T), n_heads); one program rotates BLOCK_T tokens of one head.
    head = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    i = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF] pair index
    t_ok = t < n_tokens
    i_ok = i < half
    mask = t_ok[:, None] & i_ok[None, :]  # [BLOCK_T, BLOCK_HALF]

    d = tl.load(delta_ptr + t, mask=t_ok, other=0).to(tl.float64)  # [BLOCK_T]
    f = tl.load(inv_freq_ptr + i, mask=i_ok, other=0.0).to(tl.float64)  # [BLOCK_HALF]
    angle = d[:, None] * f[None, :]  # [BLOCK_T, BLOCK_HALF] float64, as the reference
    cos = tl.cos(angle).to(tl.float32)
    sin = tl.sin(angle).to(tl.float32)

    if INTERLEAVED:
        c1 = 2 * i
        c2 = 2 * i + 1
    else:
        c1 = i
        c2 = i + half
    k_row = k_ptr + head * k_stride_h + t[:, None] * k_stride_t  # [BLOCK_T, 1] row pointers
    x1 = tl.load(k_row + c1[None, :], mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_HALF]
    x2 = tl.load(k_row + c2[None, :], mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    out_row = out_ptr + head * out_stride_h + t[:, None] * out_stride_t
    tl.store(out_row + c1[None, :], o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_row + c2[None, :], o2.to(out_ptr.dtype.element_ty), mask=mask)


def rope_rerotate(
    k: torch.Tensor,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
    interleaved: bool = False,
    impl: str | None = None,
    angles: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate every token's key by the angle delta[t] * inv_freq[i]; returns a new tensor, or `out`.

    k: [n_heads, n_tokens, head_dim] float (head_dim even), delta: [n_tokens] int64 (may be negative),
    inv_freq: [head_dim // 2] fp32. Returns [n_heads, n_tokens, head_dim] in k.dtype.
    `angles`: `rerotate_angles(delta, inv_freq)`, for the torch path when the same delta rotates the keys
    of every layer (the Triton kernel computes its angles in registers and ignores them).
    `out`: k's shape and dtype, k itself (in place: every value is read before it is written) or memory
    that does not overlap k. On the torch path an fp32 `out` is rotated without full-size temporaries.
    Triton path falls back to torch when k's last dim is not contiguous or head_dim > MAX_HEAD_DIM.
    """
    check_ndim(3, k=k)
    check_ndim(1, delta=delta, inv_freq=inv_freq)
    check_same_device(k=k, delta=delta, inv_freq=inv_freq)
    n_heads, n_tokens, head_dim = k.shape
    if not k.is_floating_point():
        raise ValueError(f"k must be a float tensor, got {k.dtype}")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    if delta.dtype != torch.int64 or delta.shape != (n_tokens,):
        raise ValueError(f"delta must be int64 [{n_tokens}], got {delta.dtype} {tuple(delta.shape)}")
    if inv_freq.dtype != torch.float32 or inv_freq.shape != (head_dim // 2,):
        raise ValueError(f"inv_freq must be fp32 [{head_dim // 2}], got {inv_freq.dtype} {tuple(inv_freq.shape)}")
    if out is not None and (out.shape != k.shape or out.dtype != k.dtype or out.device != k.device):
        raise ValueError(f"out must match k: {tuple(out.shape)} {out.dtype} vs {tuple(k.shape)} {k.dtype}")
    if not use_triton(impl, k, delta, inv_freq):
        return _rerotate_torch(k, delta, inv_freq, interleaved, angles, out)
    if k.stride(-1) != 1 or head_dim > MAX_HEAD_DIM or (out is not None and out.stride(-1) != 1):
        fall_back("rope_rerotate", f"k strides {k.stride()}, head_dim {head_dim}")
        return _rerotate_torch(k, delta, inv_freq, interleaved, angles, out)

    if out is None:
        out = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # [n_heads, n_tokens, head_dim]
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(n_tokens, BLOCK_T), n_heads)
    _rope_rerotate_kernel[grid](
        k,
        out,
        delta.contiguous(),
        inv_freq.contiguous(),
        n_tokens,
        head_dim // 2,
        k.stride(0),
        k.stride(1),
        out.stride(0),
        out.stride(1),
        INTERLEAVED=interleaved,
        BLOCK_T=BLOCK_T,
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
    )
    return out


def _rerotate_torch(
    k: torch.Tensor,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
    interleaved: bool,
    angles: tuple[torch.Tensor, torch.Tensor] | None,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """The torch path: the reference, or for an fp32 `out` in-place updates of `out` (one half-size temporary
    instead of the reference's full-size ones; the same values up to fp32 rounding)."""
    if out is None or out.dtype != torch.float32:
        rotated = rope_rerotate_ref(k, delta, inv_freq, interleaved, angles)
        return rotated if out is None else out.copy_(rotated)
    cos, sin = angles if angles is not None else rerotate_angles(delta, inv_freq)  # [n_tokens, half]
    if out is not k:
        out.copy_(k)
    x1, x2 = _pair_halves(out, interleaved)  # views of out
    x1_sin = x1 * sin  # the one value of x1 still needed once x1 is overwritten
    x1.mul_(cos).addcmul_(x2, sin, value=-1)  # x1 cos - x2 sin
    x2.mul_(cos).add_(x1_sin)  # x2 cos + x1 sin
    return out


def _pair_halves(x: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the first and second member of every rotation pair of `x: [..., head_dim]` (see the layouts
    above): [..., head_dim // 2] each."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def rerotate_angles(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [n_tokens, head_dim // 2] fp32 of the angles delta[t] * inv_freq[i] (computed in fp64:
    deltas of tens of thousands of positions lose digits in fp32)."""
    angle = delta.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # [n_tokens, half]
    return angle.cos().float(), angle.sin().float()


def rope_rerotate_ref(
    k: torch.Tensor,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
    interleaved: bool = False,
    angles: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Plain-torch reference of `rope_rerotate` (same shapes, same contract)."""
    cos, sin = angles if angles is not None else rerotate_angles(delta, inv_freq)  # [n_tokens, half]
    x = k.float()  # [n_heads, n_tokens, head_dim]
    x1, x2 = _pair_halves(x, interleaved)  # [n_heads, n_tokens, half] each
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if interleaved:
        out = torch.stack((o1, o2), dim=-1).flatten(-2)  # [n_heads, n_tokens, half, 2] -> [.., head_dim]
    else:
        out = torch.cat((o1, o2), dim=-1)  # [n_heads, n_tokens, head_dim]
    return out.to(k.dtype)
