"""`kvblend bench blend`: time-to-first-token and fidelity of blending against its baselines.

All modes run on the identical token sequence: `chunks` context chunks of `chunk_tokens` tokens each, cut
from Python files the default model never trained on, then a local prompt of `prompt_tokens` tokens.
Chunk KV is precomputed before timing (it comes from the store in real use). Fidelity is measured against
full prefill: the KL divergence of the first-token distribution, and top-1 agreement over the next
`decode_tokens` tokens with full prefill's greedy tokens fed to every mode (teacher forcing, so one early
disagreement does not decide the rest). Figures are means over `samples` sequences.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

from blend.cacheblend import BlendConfig, ChunkKV, blend, full_prefill, naive, precompute_chunk, prefix_reuse
from blend.loader import LoadedModel, load_model
from blend.tokenizer import FILE_SEP, REPO_NAME
from kvblend.training.corpus import load_repos, split_repos


@functools.cache
def _held_out_files(min_chars: int) -> list[tuple[str, str]]:
    _, held = split_repos(load_repos())
    return sorted(((p, t) for r in held for p, t in r.files if len(t) > min_chars), key=lambda f: f[0])


def make_sequences(lm: LoadedModel, n_chunks: int, chunk_tokens: int, prompt_tokens: int, seed: int = 0):
    """(header ids, [chunk ids], prompt ids): held-out stdlib files rendered in the repository format."""
    files = _held_out_files(4 * chunk_tokens)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g).tolist()
    if len(order) < n_chunks + 1:
        raise ValueError(f"need {n_chunks + 1} held-out files of {4 * chunk_tokens}+ characters, found {len(order)}")
    enc = lm.tokenizer.encode
    pieces = [enc(f"{FILE_SEP}{files[j][0]}\n{files[j][1]}")[:chunk_tokens] for j in order[:n_chunks]]
    path, text = files[order[n_chunks]]
    prompt = enc(f"{FILE_SEP}{path}\n{text}")[:prompt_tokens]
    return enc(f"{REPO_NAME}stdlib\n"), pieces, prompt


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p, q = torch.log_softmax(p_logits.float(), -1), torch.log_softmax(q_logits.float(), -1)
    return float((p.exp() * (p - q)).sum())


@torch.inference_mode()
def _agreement(model, result, reference_tokens: list[int]) -> float:
    logits, cache, hits = result.logits, result.cache, 0
    for tok in reference_tokens:
        hits += int(logits.argmax()) == tok
        logits = model.decode(tok, cache)
    return hits / len(reference_tokens)


def _run_sample(lm, seed: int, a: dict) -> tuple[dict, dict[str, dict]]:
    """One token sequence: every mode's best-of-`repeats` TTFT (s) and fidelity against full prefill."""
    model, dev = lm.model, lm.model.device
    header, pieces, prompt_ids = make_sequences(lm, a["n_chunks"], a["chunk_tokens"], a["prompt_tokens"], seed)
    prefix = None
    if a["shared_prefix"]:  # every chunk precomputed behind the repository header; the header is chunk 0
        prefix = model.new_cache(len(header))
        model.prefill(torch.tensor(header, device=dev), prefix)
    chunks: list[ChunkKV] = [precompute_chunk(model, torch.tensor(header, device=dev), offset=0)]
    for ids in pieces:
        chunks.append(
            precompute_chunk(model, torch.tensor(ids, device=dev), offset=None if prefix else 0, prefix=prefix)
        )
    prompt = torch.tensor(prompt_ids, device=dev)
    modes = {"full": lambda: full_prefill(model, chunks, prompt), "naive": lambda: naive(model, chunks, prompt)}
    modes["prefix"] = lambda: prefix_reuse(model, chunks, prompt)
    for r in a["ratios"]:
        cfg = BlendConfig(recompute_ratio=r, chunk_start_tokens=a["chunk_start_tokens"])
        modes[f"blend_r{r:g}"] = lambda cfg=cfg: blend(model, chunks, prompt, cfg)
    times: dict[str, list[float]] = {m: [] for m in modes}
    results = {m: fn() for m, fn in modes.items()}  # warm-up
    for _ in range(a["repeats"]):  # interleaved so every mode sees the same machine state
        for m, fn in modes.items():
            t0 = time.perf_counter()
            results[m] = fn()
            times[m].append(time.perf_counter() - t0)
    ref = results["full"]
    ref_tokens, logits, cache = [], ref.logits, ref.cache.clone()
    for _ in range(a["decode_tokens"]):
        ref_tokens.append(int(logits.argmax()))
        logits = model.decode(ref_tokens[-1], cache)
    per_mode = {
        m: {
            "ttft_s": min(times[m]),
            "top1_agreement": _agreement(model, res, ref_tokens),
            "first_token_kl": _kl(ref.logits, res.logits),
            "recomputed_tokens": int(res.selected.shape[0]),
        }
        for m, res in results.items()
    }
    return {"context_tokens": sum(len(c) for c in chunks), "prompt_tokens": len(prompt_ids)}, per_mode


def bench_blend(
    model_dir: Path | None = None,
    n_chunks: int = 8,
    chunk_tokens: int = 512,
    prompt_tokens: int = 256,
    decode_tokens: int = 32,
    ratios: tuple[float, ...] = (0.05, 0.15, 0.3),
    shared_prefix: bool = False,
    chunk_start_tokens: int = 0,
    repeats: int = 3,
    samples: int = 3,
    device: str | None = None,
) -> dict:
    """Every figure is the mean over `samples` token sequences (different held-out files), each timed as
    the best of `repeats` interleaved runs."""
    args = dict(locals())
    lm = load_model(model_dir, device=device)
    runs = [_run_sample(lm, seed, args) for seed in range(samples)]
    sizes = runs[0][0]
    out = {"model": str(lm.path), "samples": samples, **sizes, "chunks": n_chunks + 1, "shared_prefix": shared_prefix,
           "chunk_start_tokens": chunk_start_tokens, "threads": torch.get_num_threads()}  # fmt: skip

    def mean(mode: str, key: str) -> float:
        return sum(r[1][mode][key] for r in runs) / len(runs)

    full_s = mean("full", "ttft_s")
    for m in runs[0][1]:
        out[m] = {
            "ttft_ms": round(1000 * mean(m, "ttft_s"), 1),
            "speedup": round(full_s / mean(m, "ttft_s"), 2),
            "top1_agreement": round(mean(m, "top1_agreement"), 3),
            "first_token_kl": round(mean(m, "first_token_kl"), 5),
            "recomputed_tokens": round(mean(m, "recomputed_tokens")),
        }
    return out
