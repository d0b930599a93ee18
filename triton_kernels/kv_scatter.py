"""Write recomputed KV rows into chosen slots of a cache, in place: dst[:, index] = src.

dst may be a strided view (one layer of a [n_layers, n_heads, capacity, head_dim] buffer, a slice of
its capacity): the kernel takes its head and token strides. Indices must be distinct (a repeated slot
gets one of its rows, unspecified which) and in [0, capacity): the kernel masks out-of-range slots
rather than write outside dst, the reference raises on them.
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

MAX_HEAD_DIM = 512  # one [BLOCK_S, head_dim] tile per program; wider heads take the torch path
BLOCK_S = 32  # selected rows per program


@jit
def _kv_scatter_kernel(
    dst_ptr,  # *dst: [n_heads, capacity, head_dim], last-dim stride 1, written in place
    src_ptr,  # *src: [n_heads, n_sel, head_dim], last-dim stride 1, cast to dst's dtype on store
    index_ptr,  # *index: [n_sel] int64, contiguous, distinct slots of dst
    n_sel,  # int: rows to write per head
    capacity,  # int: slots of dst; rows aimed outside [0, capacity) are masked
    head_dim,  # int: valid lanes of the last dim
    dst_stride_h,  # int: elements between heads of dst
    dst_stride_t,  # int: elements between slots of dst
    src_stride_h,  # int: elements between heads of src
    src_stride_t,  # int: elements between rows of src
    BLOCK_S: tl.constexpr,  # rows per program (power of two)
    BLOCK_D: tl.constexpr,  # next power of two >= head_dim; lanes >= head_dim are masked
):
    # grid: (cdiv(n_sel, BLOCK_S), n_heads); one program copies BLOCK_S rows of one head.
    head = tl.program_id(1).to(tl.int64)
    s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)  # [BLOCK_S]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    s_ok = s < n_sel
    slot = tl.load(index_ptr + s, mask=s_ok, other=0)  # [BLOCK_S] int64
    row_ok = s_ok & (slot >= 0) & (slot < capacity)
    d_ok = (d < head_dim)[None, :]
    x = tl.load(
        src_ptr + head * src_stride_h + s[:, None] * src_stride_t + d[None, :],
        mask=s_ok[:, None] & d_ok,
        other=0.0,
    )  # [BLOCK_S, BLOCK_D]
    tl.store(
        dst_ptr + head * dst_stride_h + slot[:, None] * dst_stride_t + d[None, :],
        x.to(dst_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok,
    )


def kv_scatter(dst: torch.Tensor, src: torch.Tensor, index: torch.Tensor, impl: str | None = None) -> None:
    """In place: dst[:, index] = src (cast to dst.dtype).

    dst: [n_heads, capacity, head_dim] (any head/token strides), src: [n_heads, n_sel, head_dim],
    index: [n_sel] int64 distinct slots in [0, capacity).
    Triton path falls back to torch when a last dim is not contiguous or head_dim > MAX_HEAD_DIM.
    """
    check_ndim(3, dst=dst, src=src)
    check_ndim(1, index=index)
    check_same_device(dst=dst, src=src, index=index)
    n_heads, capacity, head_dim = dst.shape
    if src.shape[0] != n_heads or src.shape[2] != head_dim:
        raise ValueError(f"src {tuple(src.shape)} does not match dst {tuple(dst.shape)} in heads / head_dim")
    if index.dtype != torch.int64:
        raise ValueError(f"index must be int64, got {index.dtype}")
    if index.shape[0] != src.shape[1]:
        raise ValueError(f"index has {index.shape[0]} slots for {src.shape[1]} src rows")
    if not use_triton(impl, dst, src, index):
        kv_scatter_ref(dst, src, index)
        return
    if dst.stride(-1) != 1 or src.stride(-1) != 1 or head_dim > MAX_HEAD_DIM:
        fall_back("kv_scatter", f"strides {dst.stride()} / {src.stride()}, head_dim {head_dim}")
        kv_scatter_ref(dst, src, index)
        return
    n_sel = src.shape[1]
    if n_sel == 0 or n_heads == 0 or head_dim == 0:
        return
    grid = (triton.cdiv(n_sel, BLOCK_S), n_heads)
    _kv_scatter_kernel[grid](
        dst,
        src,
        index.contiguous(),
        n_sel,
        capacity,
        head_dim,
        dst.stride(0),
        dst.stride(1),
        src.stride(0),
        src.stride(1),
        BLOCK_S=BLOCK_S,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )


def kv_scatter_ref(dst: torch.Tensor, src: torch.Tensor, index: torch.Tensor) -> None:
    """Plain-torch reference of `kv_scatter` (same shapes, same contract; raises on out-of-range slots)."""
    dst[:, index] = src.to(dst.dtype)  # [n_heads, n_sel, head_dim] into [n_heads, capacity, head_dim]
