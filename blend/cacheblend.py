"""CacheBlend: fuse independently precomputed chunk KV into one context, recomputing only a few tokens.

For chunks c_1..c_m (each prefilled on its own, keys rotated for their stored positions) followed by a
local prompt, `blend` builds the KV of the whole sequence as if it had been prefilled:

1. Each chunk's keys are re-rotated from stored to new positions, one layer at a time (`rope_rerotate`).
2. Layers before the first check layer run in full for every token (layer 0's KV depends only on token and
   position, but the check layer needs every token's layer-0 output).
3. At a check layer, fresh K/V are computed for the tokens still active; each context token is scored by
   the deviation of its fresh K/V from the reused ones (`kv_deviation`); the top `recompute_ratio` of the
   context is kept, plus the prompt and (optionally) the first tokens of every chunk.
4. From there on only the kept tokens go through attention and MLP; their K/V overwrite the reused rows
   (`kv_scatter`) and their queries attend to the whole fused cache under a true per-position causal mask
   (`selective_attention`). In the last layer only the final prompt token's output is needed (for the
   returned logits): the kept tokens write their K/V, and just that token attends and runs the MLP.

recompute_ratio = 1 reproduces full prefill; 0 is naive concatenation with the RoPE fix.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch

from blend.config import ModelConfig
from blend.inputs import check_chunk, check_kv_layout, check_tokens
from blend.kv_cache import KVCache
from blend.model import Transformer
from triton_kernels import kv_deviation, kv_scatter, rope_rerotate
from triton_kernels.rope_rerotate import rerotate_angles

log = logging.getLogger(__name__)

# RoPE variants whose rotation depends only on the position, so a key moves by rotating it by the delta.
_REROTATABLE = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class BlendConfig:
    recompute_ratio: float = 0.15  # fraction of context tokens recomputed from the first check layer on
    check_layers: tuple[int, ...] = (1,)  # gradual filtering: later check layers re-score the kept tokens
    # ratios kept at each further check layer, relative to the context size (must not grow)
    later_ratios: tuple[float, ...] = ()
    chunk_start_tokens: int = 0  # first tokens of every chunk always recomputed (attention sinks)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check_layers", tuple(self.check_layers))  # a list would be unhashable
        object.__setattr__(self, "later_ratios", tuple(self.later_ratios))
        if not 0.0 <= self.recompute_ratio <= 1.0:
            raise ValueError(f"recompute_ratio must be in [0, 1], got {self.recompute_ratio}")
        layers = self.check_layers
        if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"check_layers must be layer indices (integers >= 0), got {layers}")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"check_layers must be increasing and non-empty, got {layers}")
        if len(self.later_ratios) != len(layers) - 1:
            raise ValueError("later_ratios needs one ratio per check layer after the first")
        ratios = (self.recompute_ratio, *self.later_ratios)
        if not all(0.0 <= r <= 1.0 for r in ratios) or any(b > a for a, b in zip(ratios, ratios[1:], strict=False)):
            raise ValueError(f"later_ratios must be in [0, 1] and must not grow from recompute_ratio, got {ratios}")
        n = self.chunk_start_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"chunk_start_tokens must be an integer >= 0, got {n!r}")


@dataclasses.dataclass
class ChunkKV:
    """One chunk's precomputed KV. k, v: [n_layers, n_kv_heads, n_tokens, head_dim]; positions: [n_tokens]."""

    tokens: torch.Tensor  # [n_tokens]
    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclasses.dataclass
class BlendResult:
    logits: torch.Tensor  # [vocab] of the last prompt token
    cache: KVCache  # the fused context + prompt, ready for decoding
    selected: torch.Tensor  # [n_sel] slots recomputed from the first check layer on (prompt included)
    timings: dict[str, float]


def can_blend(cfg: ModelConfig) -> str | None:
    """None when blending is exact for this model, else the reason it is not."""
    if cfg.rope.rope_type not in _REROTATABLE:
        return f"rope type {cfg.rope.rope_type!r} cannot be re-rotated exactly"
    return None


def precompute_chunk(
    model: Transformer,
    tokens: torch.Tensor,
    offset: int | None = None,
    prefix: KVCache | None = None,
    dtype: torch.dtype | None = None,
) -> ChunkKV:
    """Prefill `tokens: [n]` on its own (optionally behind a shared `prefix`) and keep only its own KV, in
    `dtype` (default: the model's; the store's fp16 is taken in the same single copy out of the cache)."""
    check_tokens(model.cfg, tokens, "chunk tokens")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
        raise ValueError(f"offset must be a position (an integer >= 0), got {offset!r}")
    if prefix is not None:
        check_kv_layout(model.cfg, prefix.k, prefix.v, "the prefix cache")
    cache = prefix.clone() if prefix is not None else model.new_cache(tokens.shape[0], zeroed=False)  # all written
    start = cache.n
    offset = cache.next_position if offset is None else offset
    positions = torch.arange(offset, offset + tokens.shape[0], device=tokens.device)
    model.prefill(tokens, cache, positions=positions, kv_only=True)  # no logits: the last layer's K/V are all it needs
    dtype = dtype or cache.k.dtype
    k, v = (t[:, :, start:].to(dtype, copy=True) for t in (cache.k, cache.v))  # [n_layers, n_kv_heads, n, head_dim]
    return ChunkKV(tokens, k, v, cache.positions[start:].clone())


def _chunk_bounds(chunks: list[ChunkKV]) -> list[int]:
    """Start slot of every chunk in the fused context, then the context length: [0, n_0, n_0 + n_1, ...]."""
    bounds = [0]
    for c in chunks:
        bounds.append(bounds[-1] + len(c))
    return bounds


def _moves(model: Transformer, chunks: list[ChunkKV], bounds: list[int], cache: KVCache):
    """(delta [n_ctx], angles) moving every context key from its stored to its new position, or None when no
    chunk moves. The same for every layer, so computed once per blend; a delta of 0 rotates by exactly
    nothing (cos 1, sin 0), so one rotation over the whole context serves chunks that stay too."""
    n_ctx = bounds[-1]
    stored = torch.cat([c.positions.to(cache.positions.device) for c in chunks]) if chunks else cache.positions[:0]
    delta = cache.positions[:n_ctx] - stored  # [n_ctx]
    return (delta, rerotate_angles(delta, model.inv_freq)) if bool(delta.any()) else None


def _fill_reused(model: Transformer, i: int, chunks: list[ChunkKV], bounds: list[int], cache: KVCache, move) -> None:
    """Write every chunk's layer-i KV into the fused cache, keys moved to their new positions."""
    k_store, v_store = cache.layer(i)  # [n_kv_heads, capacity, head_dim]
    for c, start, end in zip(chunks, bounds, bounds[1:], strict=False):
        k_store[:, start:end].copy_(c.k[i])  # stored precision (fp16) -> the model's
        v_store[:, start:end].copy_(c.v[i])
    if move is not None:
        keys = k_store[:, : bounds[-1]]  # [n_kv_heads, n_ctx, head_dim]
        rope_rerotate(keys, move[0], model.inv_freq, angles=move[1], out=keys)  # in place


@torch.inference_mode()
def blend(
    model: Transformer,
    chunks: list[ChunkKV],
    prompt: torch.Tensor,
    cfg: BlendConfig = BlendConfig(),
    extra_capacity: int = 64,
) -> BlendResult:
    """Build the KV of `chunks` + `prompt: [P]` (P >= 1) at positions 0..N+P-1 and return the prompt's last logits."""
    t0 = time.perf_counter()
    _check_inputs(model, chunks, prompt)
    if prompt.shape[0] == 0:  # the logits returned are the last prompt token's, and only the prompt is always kept
        raise ValueError("blend needs a prompt of at least one token")
    reason = can_blend(model.cfg)
    if reason is not None:
        _warn_once(reason)
        return full_prefill(model, chunks, prompt, extra_capacity)
    if max(cfg.check_layers) >= model.cfg.n_layers:
        raise ValueError(f"check layer {max(cfg.check_layers)} >= n_layers {model.cfg.n_layers}")
    dev = model.device
    bounds = _chunk_bounds(chunks)
    n_ctx, n_prompt = bounds[-1], prompt.shape[0]
    total = n_ctx + n_prompt
    tokens = _tokens(model, chunks, prompt)  # [total]
    positions = torch.arange(total, device=dev)
    cache = model.new_cache(total + extra_capacity, zeroed=False)  # every layer writes every slot of `total`
    cache.set_positions(cache.reserve(total), positions)
    (cos, sin), masks = model.step_plan(positions, cache, slice(0, total))  # cos, sin: [total, head_dim]
    move = _moves(model, chunks, bounds, cache)
    forced = torch.zeros(total, dtype=torch.bool, device=dev)
    forced[n_ctx:] = True  # the local prompt is always computed
    if cfg.chunk_start_tokens:
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            forced[start : min(end, start + cfg.chunk_start_tokens)] = True
    ratios = (cfg.recompute_ratio, *cfg.later_ratios)
    active = positions  # slots whose hidden state is carried; [n_active]
    h = model.embed(tokens)  # [n_active, dim]
    t_check = t_layers = 0.0
    for i in range(model.cfg.n_layers):
        t_layer = time.perf_counter()
        if i < cfg.check_layers[0]:
            h = model.layer_step(i, h, positions, cache, slice(0, total), (cos, sin), masks[i])
            t_layers += time.perf_counter() - t_layer
            continue
        _fill_reused(model, i, chunks, bounds, cache, move)
        k_store, v_store = cache.layer(i)
        if i in cfg.check_layers:  # fresh K/V of every active token; q only for those kept
            k, v = model.layer_kv(i, h, (cos[active], sin[active]))  # [kv_heads, n_active, D]
            keep = max(0, min(n_ctx, math.ceil(ratios[cfg.check_layers.index(i)] * n_ctx)))
            always = forced[active]  # the prompt and, optionally, chunk starts
            score = kv_deviation(k, k_store[:, active]) + kv_deviation(v, v_store[:, active])  # [n_active]
            score = torch.where(always, torch.inf, score)
            n_keep = min(active.shape[0], keep + int(always.sum()))
            rows = torch.topk(score, n_keep).indices.sort().values  # rows of `active`, position order
            active, h, k, v = active[rows], h[rows], k[:, rows], v[:, rows]
            q = model.layer_q(i, h, (cos[active], sin[active]))  # [heads, n_kept, D]
            t_check += time.perf_counter() - t_layer
        else:
            q, k, v = model.layer_qkv(i, h, (cos[active], sin[active]))  # q: [heads, n_active, D]
        kv_scatter(k_store, k, active)
        kv_scatter(v_store, v, active)
        if i == model.cfg.n_layers - 1:  # the last layer's output feeds only the returned logits: the last token's
            h = model.layer_finish(i, h[-1:], q[:, -1:], active[-1:], cache)
        else:
            h = model.layer_finish(i, h, q, active, cache, "selective")
        t_layers += time.perf_counter() - t_layer
    logits = model.logits(h[-1:])[0]
    timings = {"total_s": time.perf_counter() - t0, "layers_s": t_layers, "check_s": t_check}
    return BlendResult(logits, cache, active, timings)


@torch.inference_mode()
def naive(model: Transformer, chunks: list[ChunkKV], prompt: torch.Tensor, extra_capacity: int = 64) -> BlendResult:
    """Baseline: reuse every chunk's KV with keys moved to their new positions; prefill only the prompt."""
    t0 = time.perf_counter()
    _check_inputs(model, chunks, prompt)
    check_tokens(model.cfg, prompt, "the prompt")
    bounds = _chunk_bounds(chunks)
    n_ctx = bounds[-1]
    cache = model.new_cache(n_ctx + prompt.shape[0] + extra_capacity)
    cache.set_positions(cache.reserve(n_ctx), torch.arange(n_ctx, device=model.device))
    move = _moves(model, chunks, bounds, cache)
    for i in range(model.cfg.n_layers):
        _fill_reused(model, i, chunks, bounds, cache, move)
    logits = model.prefill(prompt.to(model.device), cache)
    return BlendResult(logits, cache, torch.arange(n_ctx, cache.n), {"total_s": time.perf_counter() - t0})


@torch.inference_mode()
def prefix_reuse(model: Transformer, chunks: list[ChunkKV], prompt: torch.Tensor, extra_capacity: int = 64):
    """Baseline: exact prefix caching. The first chunk's KV is reused as is (it must have been computed at
    positions 0..n-1 with nothing before it); everything after it is prefilled."""
    if not chunks:
        raise ValueError("prefix reuse needs at least one chunk (the prefix)")
    _check_inputs(model, chunks, prompt, kv=False)  # the first chunk's KV is checked by prefix_then
    rest = torch.cat([c.tokens.to(model.device) for c in chunks[1:]] + [prompt.to(model.device)])
    return prefix_then(model, chunks[0], rest, extra_capacity)


@torch.inference_mode()
def prefix_then(model: Transformer, first: ChunkKV, rest: torch.Tensor, extra_capacity: int = 64) -> BlendResult:
    """`first`'s KV reused as the exact prefix, then `rest: [R]` token ids prefilled after it (only the first
    chunk's KV is needed: the others are recomputed from their tokens)."""
    t0 = time.perf_counter()
    check_chunk(model.cfg, first, "the prefix chunk")
    check_tokens(model.cfg, rest, "tokens after the prefix")
    if not torch.equal(first.positions.cpu(), torch.arange(len(first))):
        raise ValueError("prefix reuse needs the first chunk precomputed at positions 0..n-1")
    rest = rest.to(model.device)
    cache = KVCache.from_tensors(first.k.to(model.device), first.v.to(model.device), first.positions.to(model.device))
    cache.reserve(rest.shape[0] + extra_capacity)
    cache.truncate(len(first))
    logits = model.prefill(rest, cache)
    return BlendResult(logits, cache, torch.arange(len(first), cache.n), {"total_s": time.perf_counter() - t0})


@torch.inference_mode()
def full_prefill(model: Transformer, chunks: list[ChunkKV], prompt: torch.Tensor, extra_capacity: int = 64):
    """Baseline: prefill the identical token sequence from scratch."""
    t0 = time.perf_counter()
    _check_inputs(model, chunks, prompt, kv=False)
    tokens = _tokens(model, chunks, prompt)
    cache = model.new_cache(tokens.shape[0] + extra_capacity, zeroed=False)  # the prefill writes every slot
    logits = model.prefill(tokens, cache)
    return BlendResult(logits, cache, torch.arange(tokens.shape[0]), {"total_s": time.perf_counter() - t0})


def _check_inputs(model: Transformer, chunks: list[ChunkKV], prompt: torch.Tensor, kv: bool = True) -> None:
    """Refuse chunks whose KV (`kv`) or tokens do not fit the model, and a prompt that is not 1-D token ids, with
    a ValueError naming them. Shapes only: the ids' values are checked once on what is embedded (`_tokens`)."""
    for j, c in enumerate(chunks):
        if kv:
            check_chunk(model.cfg, c, f"chunk {j}")
        check_tokens(model.cfg, c.tokens, f"chunk {j}'s tokens", values=False)
    check_tokens(model.cfg, prompt, "the prompt", values=False)


def _tokens(model: Transformer, chunks: list[ChunkKV], prompt: torch.Tensor) -> torch.Tensor:
    """The chunks' tokens then the prompt's on the model's device, ids checked against the vocabulary: [total]."""
    tokens = torch.cat([c.tokens.to(model.device) for c in chunks] + [prompt.to(model.device)])
    check_tokens(model.cfg, tokens, "the context (chunks + prompt)")
    return tokens


_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("blending disabled, falling back to full prefill: %s", reason)
