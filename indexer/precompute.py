"""Precompute chunk KV in priority order: open files, then recently edited, README, commits, the rest.

`PrecomputeQueue` holds chunks whose KV is missing from the store, each once (a chunk submitted again with a
better priority moves up). It runs either in the caller's thread (`run_pending`, the CLI and tests) or in a
background thread (`start`, the language server), and reports progress through a callback after each chunk.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import logging
import threading
from collections.abc import Callable

import torch

from blend.cacheblend import ChunkKV, precompute_chunk
from blend.model import Transformer
from indexer.chunker import Chunk
from indexer.keys import ChunkKey

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    OPEN = 0  # files open in the editor
    RECENT = 1  # edited in this session
    README = 2
    COMMIT = 3
    REST = 4


@dataclasses.dataclass(frozen=True)
class Progress:
    done: int  # chunks computed since the queue was last empty
    total: int  # done + pending
    tokens: int  # tokens computed since then
    path: str  # the chunk just computed ("" before the first)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[Progress], None]


class Precomputer:
    """Runs the engine on one chunk: alone at positions 0..n-1, or behind a shared prefix (computed once)."""

    def __init__(self, model: Transformer, prefix: tuple[int, ...] = ()) -> None:
        self.model = model
        self.prefix = prefix
        self._prefix_cache = None
        if prefix:
            cache = model.new_cache(len(prefix))
            model.prefill(torch.tensor(prefix, device=model.device), cache)
            self._prefix_cache = cache

    @torch.inference_mode()
    def __call__(self, tokens: tuple[int, ...]) -> ChunkKV:
        t = torch.tensor(tokens, dtype=torch.long, device=self.model.device)  # [n]
        offset = 0 if self._prefix_cache is None else None
        # fp16, the precision every tier keeps, so that a chunk blends the same whether it was just computed,
        # held in memory or loaded from disk. KV that overflows fp16 stays as is (memory only: disk refuses it).
        kv = precompute_chunk(self.model, t, offset=offset, prefix=self._prefix_cache, dtype=torch.float16)
        if not (_finite(kv.k) and _finite(kv.v)):
            kv = precompute_chunk(self.model, t, offset=offset, prefix=self._prefix_cache)
        return kv


def _finite(x: torch.Tensor) -> bool:
    """No inf or nan in `x` (fp16): one fp32 sum, not an element-wise mask. Exact: a sum of finite fp16 values
    (|x| <= 65504) cannot overflow fp32 at any chunk size, and any inf or nan makes the sum inf or nan."""
    return bool(torch.isfinite(x.sum(dtype=torch.float32)))


class PrecomputeQueue:
    def __init__(self, work: Callable[[Chunk], None], progress: ProgressCallback | None = None) -> None:
        self._work = work  # computes and stores one chunk's KV
        self._progress = progress
        self._heap: list[tuple[int, int, ChunkKey]] = []
        self._pending: dict[ChunkKey, tuple[int, Chunk]] = {}  # key -> (priority, chunk)
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._stop = False
        self._done = self._tokens = 0
        self.errors = 0

    def submit(self, chunk: Chunk, priority: Priority) -> None:
        with self._cv:
            old = self._pending.get(chunk.key)
            if old is not None and old[0] <= priority:
                return
            self._pending[chunk.key] = (int(priority), chunk)
            heapq.heappush(self._heap, (int(priority), next(self._seq), chunk.key))
            self._cv.notify_all()

    def reprioritize(self, paths: set[str], priority: Priority) -> None:
        with self._cv:
            for _, chunk in [v for v in self._pending.values() if v[1].path in paths]:
                self.submit(chunk, priority)

    def discard(self, keys: set[ChunkKey]) -> None:
        with self._cv:
            for k in keys:
                self._pending.pop(k, None)

    def __len__(self) -> int:
        return len(self._pending)

    def _pop(self) -> Chunk | None:
        """The best pending chunk (caller holds the lock); stale heap rows are skipped."""
        while self._heap:
            prio, _, key = heapq.heappop(self._heap)
            item = self._pending.get(key)
            if item is not None and item[0] == prio:
                del self._pending[key]
                return item[1]
        return None

    def _run_one(self, chunk: Chunk) -> None:
        try:
            self._work(chunk)
        except Exception:  # one bad chunk must not stop indexing; the traceback names it, not its text
            self.errors += 1
            log.exception("precompute failed for a chunk of %s", chunk.path)
        with self._cv:
            self._done += 1
            self._tokens += chunk.n_tokens
            report = Progress(self._done, self._done + len(self._pending), self._tokens, chunk.path)
            if not self._pending:
                self._done = self._tokens = 0
        if self._progress is not None:
            self._progress(report)

    def run_pending(self) -> int:
        """Compute everything pending in this thread; returns the number of chunks computed."""
        n = 0
        while True:
            with self._cv:
                chunk = self._pop()
                if chunk is None:
                    return n
                self._busy = True
            try:
                self._run_one(chunk)
                n += 1
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    # -- background mode ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="kvblend-precompute", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._pending:
                    self._cv.wait()
                if self._stop:
                    return
                chunk = self._pop()
                self._busy = chunk is not None
            if chunk is None:
                continue
            try:
                self._run_one(chunk)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running (background mode); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
