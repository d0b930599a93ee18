"""`kvblend bench vllm`: time to first token in vLLM, its own full prefill vs our blended KV through the connector.

Per context length: a repo header, chunks of `chunk_tokens` tokens and a local prompt of `prompt_tokens` tokens
add up to about that many tokens (held-out stdlib code for a trained model, random token ids for a random one).
Chunk KV is precomputed before timing (in real use it comes from the KV store). Timed, per mode, best and
median of `repeats` after one warm-up, each a request for one token:
- vllm_full:  vLLM prefills the whole prompt.
- vllm_blend: our engine blends (recompute `ratio` of the context) + hand-off + vLLM loads it through the
              connector, computes the last partial block and samples.
- torch_full / torch_blend (optional): the same two on our own engine, for reference.
Fidelity: how many of the first `check_tokens` greedy tokens of vllm_blend equal vllm_full's before the first
difference (free-running: after one difference the two continuations go apart), as a fraction.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time

import torch

from blend.cacheblend import ChunkKV, precompute_chunk
from blend.loader import LoadedModel
from blend.tokenizer import FILE_SEP
from kvblend.engine import Engine, EngineRequest, TorchEngine

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VllmBenchConfig:
    contexts: tuple[int, ...] = (4096,)  # total prompt tokens per row (context chunks + local prompt)
    chunk_tokens: int = 512  # a typical file chunk of the indexer
    prompt_tokens: int = 256  # the local FIM prompt
    ratio: float = 0.15  # CacheBlend's default recompute ratio
    repeats: int = 3
    check_tokens: int = 16
    tokens: str = "corpus"  # corpus (held-out stdlib code; trained models) | random (random-weight models)
    with_torch: bool = True  # also time our own engine

    def __post_init__(self) -> None:
        if not self.contexts:
            raise ValueError("at least one context length is needed")
        for name in ("chunk_tokens", "prompt_tokens", "repeats", "check_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.tokens not in ("corpus", "random"):
            raise ValueError(f"unknown token source {self.tokens!r} (expected corpus or random)")
        if any(c <= self.prompt_tokens + self.chunk_tokens for c in self.contexts):
            raise ValueError(f"every context must exceed prompt + one chunk ({self.prompt_tokens + self.chunk_tokens})")


def _sequences(lm: LoadedModel, total: int, cfg: VllmBenchConfig, seed: int = 0):
    """(chunk token lists, prompt) whose lengths add up to at most `total` - 1 (room for one generated token)."""
    n_chunks = (total - 1 - cfg.prompt_tokens - 8) // cfg.chunk_tokens
    if cfg.tokens == "random":
        g = torch.Generator().manual_seed(seed)
        hi = min(lm.config.vocab_size, 32000)
        pieces = [torch.randint(100, hi, (cfg.chunk_tokens,), generator=g).tolist() for _ in range(n_chunks)]
        return [[1, 2, 3, 4]] + pieces, torch.randint(100, hi, (cfg.prompt_tokens,), generator=g).tolist()
    from kvblend.bench_blend import make_sequences

    header, pieces, prompt = make_sequences(lm, n_chunks, cfg.chunk_tokens, cfg.prompt_tokens, seed)
    assert all(p[0] == lm.tokenizer.token_id(FILE_SEP) for p in pieces)
    return [header] + pieces, prompt


def _chunk_kv(lm: LoadedModel, pieces: list[list[int]]) -> list[ChunkKV]:
    """Each chunk prefilled on its own behind nothing but its offset after the header (the indexer's way)."""
    dev = lm.model.device
    kvs = [precompute_chunk(lm.model, torch.tensor(pieces[0], device=dev), offset=0)]
    kvs += [precompute_chunk(lm.model, torch.tensor(p, device=dev), offset=len(pieces[0])) for p in pieces[1:]]
    if dev.type == "cuda":  # keep GPU memory for vLLM; the blend moves each layer over as it needs it
        kvs = [ChunkKV(c.tokens, c.k.cpu(), c.v.cpu(), c.positions) for c in kvs]
    return kvs


def _ttft(engine: Engine, request: EngineRequest, repeats: int) -> dict[str, float]:
    engine.generate(request)  # warm-up: allocator, kernels, first-call paths
    times, split = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        out = engine.generate(request)
        times.append(time.perf_counter() - t)
        split = out.timings
    row = {"best_ms": round(min(times) * 1e3, 1), "median_ms": round(statistics.median(times) * 1e3, 1)}
    if "blend_s" in split:
        row["blend_ms"] = round(split["blend_s"] * 1e3, 1)
    return row


def bench_vllm(vllm_engine: Engine, lm: LoadedModel, cfg: VllmBenchConfig = VllmBenchConfig()) -> dict:
    """One row per context length: TTFT of each mode (ms) and the blend's greedy agreement with full prefill."""
    rows = []
    torch_engine = TorchEngine(lm) if cfg.with_torch else None
    for total in cfg.contexts:
        pieces, prompt = _sequences(lm, total, cfg)
        chunks = _chunk_kv(lm, pieces)
        n_tokens = sum(len(p) for p in pieces) + len(prompt)
        full = EngineRequest(chunks, prompt, 1, frozenset(), "full")
        blended = EngineRequest(chunks, prompt, 1, frozenset(), "blend", cfg.ratio)
        row: dict = {"context": total, "tokens": n_tokens, "chunks": len(pieces)}
        row["vllm_full"] = _ttft(vllm_engine, full, cfg.repeats)
        row["vllm_blend"] = _ttft(vllm_engine, blended, cfg.repeats)
        if torch_engine is not None:
            row["torch_full"] = _ttft(torch_engine, full, cfg.repeats)
            row["torch_blend"] = _ttft(torch_engine, blended, cfg.repeats)
        row["speedup"] = round(row["vllm_full"]["best_ms"] / row["vllm_blend"]["best_ms"], 2)
        ref = vllm_engine.generate(dataclasses.replace(full, max_tokens=cfg.check_tokens)).tokens
        got = vllm_engine.generate(dataclasses.replace(blended, max_tokens=cfg.check_tokens)).tokens
        same = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), min(len(ref), len(got)))
        row["agreement"] = round(same / max(len(ref), 1), 3)
        log.info("context %d: %s", total, row)
        rows.append(row)
    return {"model": str(lm.path), "ratio": cfg.ratio, "chunk_tokens": cfg.chunk_tokens,
            "prompt_tokens": cfg.prompt_tokens, "rows": rows}  # fmt: skip


def format_table(result: dict) -> str:
    """One plain-text table of a `bench_vllm` result."""
    modes = [m for m in ("vllm_full", "vllm_blend", "torch_full", "torch_blend") if m in result["rows"][0]]
    head = ["context", "tokens", *[f"{m} ms" for m in modes], "blend part ms", "speedup", "agree"]
    lines = [" | ".join(head), " | ".join("-" * len(h) for h in head)]
    for r in result["rows"]:
        blend_ms = r["vllm_blend"].get("blend_ms", 0.0)
        cells = [str(r["context"]), str(r["tokens"]), *[f"{r[m]['best_ms']:.1f}" for m in modes],
                 f"{blend_ms:.1f}", f"{r['speedup']:.2f}x", f"{r['agreement']:.2f}"]  # fmt: skip
        lines.append(" | ".join(cells))
    return "\n".join(lines)
