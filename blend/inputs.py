"""Checks on what enters the engine from outside: token ids, precomputed chunk KV, caches made elsewhere.

Each runs once per call where the input arrives (never per layer or per token) and raises `ValueError`
naming the offending value, so that a chunk from another model or an id from another tokenizer is a clear
error instead of an IndexError deep in the forward (a device-side assert on CUDA) or silently wrong KV.
"""

from __future__ import annotations

import torch

from blend.config import ModelConfig

# Index dtypes `nn.Embedding` takes.
TOKEN_DTYPES = (torch.int64, torch.int32)


def check_tokens(cfg: ModelConfig, tokens: torch.Tensor, what: str, values: bool = True) -> None:
    """`tokens` must be a 1-D integer tensor (it may be empty) of ids in [0, vocab_size) (checked with `values`:
    one read of the tensor, so callers check a concatenation once rather than each piece)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype not in TOKEN_DTYPES:
        shape, dtype = (tuple(tokens.shape), tokens.dtype) if isinstance(tokens, torch.Tensor) else ("-", type(tokens))
        raise ValueError(f"{what} must be a 1-D tensor of token ids (int64), got shape {shape} and dtype {dtype}")
    if values and tokens.numel():
        lo, hi = torch.stack(torch.aminmax(tokens)).tolist()  # one read (one sync on a GPU)
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} holds token id {bad}, outside the model's vocabulary [0, {cfg.vocab_size})")


def check_kv_layout(cfg: ModelConfig, k: torch.Tensor, v: torch.Tensor, what: str) -> None:
    """k, v: [n_layers, n_kv_heads, n_tokens, head_dim] of this model, floating point."""
    want = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
    fits = all(t.dim() == 4 and (t.shape[0], t.shape[1], t.shape[3]) == want for t in (k, v))
    if not fits or k.shape != v.shape:
        raise ValueError(
            f"{what} has KV of shape k {tuple(k.shape)}, v {tuple(v.shape)}, but this model's is "
            f"({want[0]}, {want[1]}, n_tokens, {want[2]}) (n_layers, n_kv_heads, n_tokens, head_dim): "
            "it was computed by another model"
        )
    if not (k.dtype.is_floating_point and v.dtype.is_floating_point):
        raise ValueError(f"{what} has KV of dtype {k.dtype}/{v.dtype}: floating point expected")


def check_chunk(cfg: ModelConfig, chunk, what: str) -> None:
    """A `ChunkKV` that fits this model: tokens [n], k, v [n_layers, n_kv_heads, n, head_dim], positions [n]."""
    n = chunk.tokens.shape[0] if chunk.tokens.dim() == 1 else -1
    check_kv_layout(cfg, chunk.k, chunk.v, what)
    if chunk.k.shape[2] != n or tuple(chunk.positions.shape) != (n,):
        raise ValueError(
            f"{what} is inconsistent: tokens {tuple(chunk.tokens.shape)}, k {tuple(chunk.k.shape)}, "
            f"positions {tuple(chunk.positions.shape)} (expected [n], [..., n, ...] and [n])"
        )
    if chunk.positions.dtype.is_floating_point or chunk.positions.dtype == torch.bool:
        raise ValueError(f"{what} has positions of dtype {chunk.positions.dtype}: integers expected")
