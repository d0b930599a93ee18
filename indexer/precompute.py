"""Precompute chunk KV in priority order: open files, then recently edited, README, commits, the rest.

`PrecomputeQueue` holds chunks whose KV is missing from the store, each once (a chunk submitted again with a
better priority moves up). It runs either in the caller's thread (`run_pending`, the CLI and tests; helper threads
join it when there are several workers) or in background threads (`start`, the language server), and reports
progress through a callback after each chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
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


def default_workers(device: torch.device) -> int:
    """Precompute workers for a model on `device`: on a CPU one per torch thread (up to 8), each running one
    chunk single-threaded; on an accelerator 1 (its kernels already fill it)."""
    return min(8, torch.get_num_threads()) if device.type == "cpu" else 1


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` threads sharing this thread's count."""
    return max(1, torch.get_num_threads() // workers)


def run_on_workers(work: Callable[[], int], workers: int, interrupted: Callable[[], None] = lambda: None) -> int:
    """`work()` in this thread and in `workers - 1` helper threads at once, each on `threads_per_worker` torch
    threads (torch keeps the count per thread; this thread's is restored); returns the sum of their results.
    If this thread's `work` raises, `interrupted()` must make the helpers' `work` return; they are joined
    before the exception propagates."""
    each, threads = threads_per_worker(workers), torch.get_num_threads()
    results: list[int] = []

    def helper() -> None:
        torch.set_num_threads(each)
        results.append(work())

    helpers = [threading.Thread(target=helper, name=f"kvblend-worker-{i}", daemon=True) for i in range(1, workers)]
    torch.set_num_threads(each)
    try:
        for t in helpers:
            t.start()
        results.append(work())
    except BaseException:
        interrupted()
        raise
    finally:
        for t in helpers:
            t.join()
        torch.set_num_threads(threads)
    return sum(results)


def _finite(x: torch.Tensor) -> bool:
    """No inf or nan in `x` (fp16). On a CPU from the bit patterns: a half is inf or nan when its exponent bits
    are all set, that is when its bits read as int16 are >= 0x7C00 (positive) or read as uint16 are >= 0xFC00
    (negative), so two integer max passes decide it (an index run's checks: 43 -> ~15 ms of CPU, README).
    Elsewhere one fp32 sum, exact too: a sum of finite fp16 values (|x| <= 65504) cannot overflow fp32 at any
    chunk size, and any inf or nan makes the sum inf or nan."""
    if x.device.type == "cpu" and x.dtype == torch.float16 and x.is_contiguous():
        bits = x.view(torch.int16).numpy()
        return bits.size == 0 or (int(bits.max()) < 0x7C00 and int(bits.view(np.uint16).max()) < 0xFC00)
    return bool(torch.isfinite(x.sum(dtype=torch.float32)))


class PrecomputeQueue:
    """Pending chunks by priority, computed by `workers` threads.

    On a CPU, W workers of T / W torch threads each (T: torch's thread count) beat one worker of T threads:
    a chunk of a few hundred tokens keeps one thread busy, while T threads on it spend much of their time
    waiting for each other (measured: README, Indexer). Each worker sets its own thread count, which torch
    keeps per thread, so the caller's is unchanged."""

    def __init__(
        self, work: Callable[[Chunk], None], progress: ProgressCallback | None = None, workers: int = 1
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._work = work  # computes and stores one chunk's KV
        self._progress = progress
        self.workers = workers
        self._heap: list[tuple[int, int, ChunkKey]] = []
        self._pending: dict[ChunkKey, tuple[int, Chunk]] = {}  # key -> (priority, chunk)
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._report = threading.Lock()  # progress reports go out one at a time, in order
        self._running = 0  # chunks being computed right now
        self._held = 0  # requests in flight (`yielding`): workers start no new chunk while any is
        self._threads: list[threading.Thread] = []
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
        with self._report:
            with self._cv:
                self._done += 1
                self._tokens += chunk.n_tokens
                report = Progress(self._done, self._done + len(self._pending) + self._running - 1, self._tokens,
                                  chunk.path)  # fmt: skip
                if not self._pending and self._running == 1:
                    self._done = self._tokens = 0
            if self._progress is not None:
                self._progress(report)

    @contextlib.contextmanager
    def yielding(self) -> Iterator[None]:
        """While a request runs inside this block, background workers start no new chunk (the ones they hold
        finish): precompute yields the cores to the user's request. Nested and concurrent uses count."""
        with self._cv:
            self._held += 1
        try:
            yield
        finally:
            with self._cv:
                self._held -= 1
                self._cv.notify_all()

    def pause_while_held(self) -> None:
        """Wait while a request holds the queue (for background work besides the workers: the index walk)."""
        with self._cv:
            self._cv.wait_for(lambda: not self._held or self._stop)

    def _next(self, wait: bool) -> Chunk | None:
        """Claim the best pending chunk; None when stopping, or (wait=False) when nothing is pending. Background
        workers (wait=True) also wait while a request holds the queue (`yielding`)."""
        with self._cv:
            while True:
                chunk = None if self._stop or (wait and self._held) else self._pop()
                if chunk is not None:
                    self._running += 1
                    return chunk
                if self._stop or not wait:
                    return None
                self._cv.wait()

    def _drain(self, wait: bool) -> int:
        """Compute claimed chunks until there are none (wait=False) or until `stop` (wait=True)."""
        n = 0
        while (chunk := self._next(wait)) is not None:
            try:
                self._run_one(chunk)
                n += 1
            finally:
                with self._cv:
                    self._running -= 1
                    self._cv.notify_all()
        return n

    def _worker(self, threads: int) -> None:
        torch.set_num_threads(threads)  # this thread's own setting
        self._drain(wait=True)

    def run_pending(self) -> int:
        """Compute everything pending: in this thread, with `workers - 1` helper threads; returns the number of
        chunks computed."""
        with self._cv:
            self._stop = False

        def interrupted() -> None:  # the helpers finish the chunk they hold, then stop
            with self._cv:
                self._stop = True
                self._cv.notify_all()

        return run_on_workers(lambda: self._drain(wait=False), self.workers, interrupted)

    # -- background mode ---------------------------------------------------------------------

    def start(self) -> None:
        """Compute in `workers` background threads from now on, until `stop`."""
        if self._threads:
            return
        self._stop = False
        each = threads_per_worker(self.workers)  # read here: a new thread starts from torch's default
        self._threads = [
            threading.Thread(target=self._worker, args=(each,), name=f"kvblend-precompute-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            try:
                t.start()
            except RuntimeError:  # the system's thread limit: stop the ones running, keep the error
                self._threads = [s for s in self._threads if s.ident is not None]
                self.stop()
                raise

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running (background mode), or until `stop`; False on timeout or when
        stopped with chunks still pending."""
        with self._cv:
            self._cv.wait_for(lambda: self._stop or (not self._pending and not self._running), timeout)
            return not self._pending and not self._running

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
        self._threads = []  # `_stop` stays set (waiters see it) until `start` or `run_pending`
