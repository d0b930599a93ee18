"""Autoregressive decoding on top of a KV cache, with stop rules and per-stage timings."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from blend.inputs import check_kv_layout, check_tokens
from blend.kv_cache import KVCache
from blend.model import Transformer
from blend.sampling import Sampler


@dataclasses.dataclass
class Generation:
    tokens: list[int]
    stop_reason: str  # "eos" | "max_tokens" | "stop" (a caller's stop rule) | "cancelled"
    prefill_s: float = 0.0
    decode_s: float = 0.0


def generate(
    model: Transformer,
    prompt: list[int],
    max_tokens: int,
    sampler: Sampler | None = None,
    eos_ids: tuple[int, ...] = (),
    cache: KVCache | None = None,
    should_stop: Callable[[list[int]], bool] | None = None,
) -> Generation:
    """Prefill `prompt` on top of `cache` (a fresh one by default), then decode up to `max_tokens`.

    `should_stop(tokens)` is asked after every new token (stop rules, cancellation). The cache holds the
    prompt and every generated token but the last one when this returns.
    """
    sampler = sampler or Sampler()
    out: list[int] = []
    if max_tokens <= 0:
        return Generation(out, "max_tokens")
    ids = torch.tensor(prompt) if len(prompt) else torch.zeros(0, dtype=torch.long)  # [P], on the CPU: checked there
    check_tokens(model.cfg, ids, "the prompt")
    if cache is not None:
        check_kv_layout(model.cfg, cache.k, cache.v, "the cache")
    cache = cache if cache is not None else model.new_cache(len(prompt) + max_tokens)
    t0 = time.perf_counter()
    logits = model.prefill(ids.to(model.device), cache)
    t1 = time.perf_counter()
    reason = "max_tokens"
    while True:
        token = sampler(logits)
        if token in eos_ids:
            reason = "eos"
            break
        out.append(token)
        if should_stop is not None and should_stop(out):
            reason = "stop"
            break
        if len(out) >= max_tokens:
            break
        logits = model.decode(token, cache)
    return Generation(out, reason, t1 - t0, time.perf_counter() - t1)
