"""`kvblend bench capsule`: time-to-first-token of resuming a session from a capsule against a cold prefill.

For each context length: the context is `n` tokens of Python source (stdlib files concatenated in name
order, the same stream for every length) and the edit delta is the next `delta_tokens` tokens.
- cold: a fresh cache, one prefill of context + delta (what a request costs with no saved state);
- warm: restore the capsule of the context (snapshotted beforehand) and prefill only the delta.
Both end with the logits of the first new token, which must agree (`first_token_match`). Timings are the
best of `repeats` runs (cold: at most 2 at 8k+ tokens, where one prefill takes seconds; warm: 20, half
before and half after the cold runs). `restore_ms_memory` is restore alone from RAM, `restore_ms_disk`
reading + verifying the capsule file (page-cached) + restore, at the longest context, whose capsule size is
`capsule_bytes` (in memory, spare tail included) and `capsule_file_bytes` (on disk).
"""

from __future__ import annotations

import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from blend.loader import load_model
from capsule import restore, serde, snapshot

CONTEXTS = (2048, 4096, 8192, 16384)
WARM_REPEATS = 20  # warm runs are ~10-50 ms: many of them cost little and ride out bursts of load


def source_stream(tokenizer, n_tokens: int) -> list[int]:
    """At least `n_tokens` token ids of stdlib Python source, files in name order (deterministic)."""
    ids: list[int] = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        try:
            ids += tokenizer.encode(f"# {path.name}\n{path.read_text(encoding='utf-8')}\n")
        except (OSError, UnicodeDecodeError):
            continue
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise ValueError(f"the stdlib at {root} holds fewer than {n_tokens} tokens of source")


def _ms(ts: list[float]) -> float:
    return round(1000 * min(ts), 3)


def _warm(model, cap, fp: str, delta: torch.Tensor, times: int, warm_s: list, restore_s: list) -> torch.Tensor:
    """Restore `cap` and prefill `delta` `times` times; appends seconds to `warm_s` and `restore_s`."""
    for _ in range(times):
        t0 = time.perf_counter()
        state = restore(cap, fp, capacity_extra=delta.shape[0])
        t1 = time.perf_counter()
        logits = model.prefill(delta, state.cache)
        warm_s.append(time.perf_counter() - t0)
        restore_s.append(t1 - t0)
        del state  # frees the tail lease for the next repeat, as a finished session would
    return logits


@torch.inference_mode()
def bench_capsule(
    model_dir: Path | None = None,
    contexts: tuple[int, ...] = CONTEXTS,
    delta_tokens: int = 16,
    repeats: int = 5,
    device: str | None = None,
) -> dict:
    lm = load_model(model_dir, device=device)
    model, fp, dev = lm.model, lm.fingerprint, lm.model.device
    stream = source_stream(lm.tokenizer, max(contexts) + delta_tokens)
    out: dict = {"model": str(lm.path), "device": str(dev), "dtype": str(model.dtype).removeprefix("torch."),
                 "threads": torch.get_num_threads(), "delta_tokens": delta_tokens, "contexts": {}}  # fmt: skip
    model.prefill(torch.tensor(stream[:256], device=dev), model.new_cache(256))  # warm-up
    cap = None
    for n in contexts:
        ctx, delta = stream[:n], stream[n : n + delta_tokens]
        live = model.new_cache(n)
        logits = model.prefill(torch.tensor(ctx, device=dev), live)
        t0 = time.perf_counter()
        cap = snapshot(live, ctx, logits, fp)
        snap_s = time.perf_counter() - t0
        del live
        delta_t = torch.tensor(delta, device=dev)
        warm_s, restore_s = [], []

        # Warm runs before and after the cold ones: a burst of load from other processes hits both sides.
        warm_logits = _warm(model, cap, fp, delta_t, WARM_REPEATS // 2, warm_s, restore_s)
        full = torch.tensor(ctx + delta, device=dev)
        cold_s = []
        for _ in range(repeats if n < 8192 else min(repeats, 2)):
            cache = model.new_cache(n + delta_tokens)
            t0 = time.perf_counter()
            cold_logits = model.prefill(full, cache)
            cold_s.append(time.perf_counter() - t0)
        del cache
        warm_logits = _warm(model, cap, fp, delta_t, WARM_REPEATS - WARM_REPEATS // 2, warm_s, restore_s)
        out["contexts"][str(n)] = {
            "cold_ttft_ms": _ms(cold_s),
            "warm_ttft_ms": _ms(warm_s),
            "speedup": round(min(cold_s) / min(warm_s), 1),
            "warm_ttft_ms_median": round(1000 * statistics.median(warm_s), 3),
            "restore_ms": _ms(restore_s),
            "snapshot_ms": round(1000 * snap_s, 1),
            "first_token_match": int(cold_logits.argmax()) == int(warm_logits.argmax()),
            "max_logit_diff": round(float((cold_logits - warm_logits).abs().max()), 6),
        }
    mem_s = []
    for _ in range(200):
        t0 = time.perf_counter()
        state = restore(cap, fp, capacity_extra=delta_tokens)
        mem_s.append(time.perf_counter() - t0)
        del state
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{cap.id}{serde.SUFFIX}"
        file_bytes = serde.write(cap, path)
        disk_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            loaded = serde.read(path, device=dev)
            state = restore(loaded, fp, capacity_extra=delta_tokens)
            disk_s.append(time.perf_counter() - t0)
            del state, loaded
    out.update(
        capsule_tokens=cap.n,
        restore_ms_memory=round(1000 * min(mem_s), 4),
        restore_ms_memory_median=round(1000 * statistics.median(mem_s), 4),
        restore_ms_disk=_ms(disk_s),
        capsule_bytes=cap.bytes,
        capsule_file_bytes=file_bytes,
    )
    return out
