"""Latency of a completion-sized blend while the workspace is being indexed in the background.

A blend of `--chunks` x 512-token chunks and a 256-token prompt (r = 0.15) is timed `--requests` times idle,
then while an `Indexer` precomputes a workspace in background workers, with and without the request holding
the precompute queue (`PrecomputeQueue.yielding`, what `Completer.complete` does), in alternating rounds.
Each round indexes into a fresh cache, so there is always work queued.

    python benchmarks/request_under_indexing.py [--workspace .] [--workers 0] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from blend.cacheblend import BlendConfig, blend, precompute_chunk
from blend.loader import load_model
from indexer import Indexer, IndexerConfig
from kvblend.bench_blend import make_sequences


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workspace", type=Path, default=Path("."), help="indexed in the background (fresh cache)")
    ap.add_argument("--workers", type=int, default=0, help="precompute workers (0: the default)")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    lm = load_model(args.model)
    model = lm.model
    header, pieces, prompt_ids = make_sequences(lm, args.chunks, 512, 256, 0)
    chunks = [precompute_chunk(model, torch.tensor(t), offset=0) for t in [header, *pieces]]
    prompt, cfg = torch.tensor(prompt_ids), BlendConfig(0.15)

    def requests(hold) -> list[float]:
        ms = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            with hold():
                blend(model, chunks, prompt, cfg)
            ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.15)  # typing pauses between requests
        return ms

    for _ in range(3):
        blend(model, chunks, prompt, cfg)
    out: dict[str, list[float]] = {"idle": requests(contextlib.nullcontext), "indexing": [], "indexing_yield": []}
    tmp = Path(tempfile.mkdtemp(prefix="kvblend-bench-req-"))
    try:
        for i in range(2 * args.rounds):
            mode = ("indexing", "indexing_yield")[i % 2]
            idx = Indexer(IndexerConfig(args.workspace, cache_dir=tmp / f"c{i}", workers=args.workers), lm)
            idx.start()
            walker = threading.Thread(target=idx.index, daemon=True)
            walker.start()
            time.sleep(1.0)  # the walk is under way and chunks are queued
            out[mode] += requests(idx.queue.yielding if mode == "indexing_yield" else contextlib.nullcontext)
            if not len(idx.queue):
                print(f"warning: the queue ran dry during round {i}; index a bigger workspace")
            idx.close()
            walker.join()
            workers = idx.workers
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"workers": workers, "threads": torch.get_num_threads()}
    for mode, ms in out.items():
        result[mode] = {"median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1), "n": len(ms)}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
