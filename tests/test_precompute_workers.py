"""Precompute on several worker threads: every chunk computed once, claimed in priority order, progress in
order, the caller's torch thread count untouched; the same store content as one worker."""

import threading
import time

import pytest
import torch

from indexer import Indexer
from indexer.chunker import Chunk
from indexer.keys import chunk_key
from indexer.precompute import PrecomputeQueue, Priority, run_on_workers
from tests.test_indexer_index import _cfg, lm, make_fixture_repo  # noqa: F401 - lm is a fixture


def _chunks(n: int) -> list[Chunk]:
    out = []
    for i in range(n):
        tokens = (i + 1, i + 2, i + 3)
        out.append(Chunk(f"f{i}.py", "code", 1, 1, f"text {i}", tokens, chunk_key("ab" * 8, tokens), f"{i:032x}"))
    return out


def test_workers_claim_in_priority_order_and_compute_each_chunk_once():
    chunks = _chunks(24)
    claimed, computed, lock, reports = [], [], threading.Lock(), []

    def work(chunk):
        with lock:
            computed.append(chunk.path)
        time.sleep(0.002)  # long enough that the workers overlap
        if chunk.path == "f7.py":
            raise RuntimeError("a broken chunk")

    q = PrecomputeQueue(work, reports.append, workers=3)
    pop = q._pop  # claims are made here, under the queue's lock: record them in that order

    def claim():
        chunk = pop()
        if chunk is not None:
            claimed.append(chunk.path)
        return chunk

    q._pop = claim
    prio = {c.path: [Priority.REST, Priority.README, Priority.OPEN][i % 3] for i, c in enumerate(chunks)}
    for c in chunks:
        q.submit(c, prio[c.path])
    threads = torch.get_num_threads()
    assert q.run_pending() == 24
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    assert sorted(computed) == sorted(c.path for c in chunks)  # each once
    assert claimed == [c.path for c in sorted(chunks, key=lambda c: prio[c.path])]  # stable within a priority
    assert [r.done for r in reports] == list(range(1, 25)) and reports[-1].total == 24
    assert q.errors == 1 and len(q) == 0


def test_background_workers_stop_and_wait():
    chunks = _chunks(10)
    done, lock = [], threading.Lock()

    def work(chunk):
        time.sleep(0.001)
        with lock:
            done.append(chunk.path)

    q = PrecomputeQueue(work, workers=2)
    q.start()
    try:
        for c in chunks:
            q.submit(c, Priority.REST)
        assert q.wait(timeout=30)
        assert sorted(done) == sorted(c.path for c in chunks)
    finally:
        q.stop()
    assert all(not t.is_alive() for t in threading.enumerate() if t.name.startswith("kvblend-precompute"))
    with pytest.raises(ValueError, match="workers"):
        PrecomputeQueue(work, workers=0)


def test_two_workers_store_what_one_worker_stores(tmp_path, lm):  # noqa: F811
    make_fixture_repo(tmp_path / "ws")
    one = Indexer(_cfg(tmp_path / "ws", cache_dir=tmp_path / "c1", workers=1), lm)
    two = Indexer(_cfg(tmp_path / "ws", cache_dir=tmp_path / "c2", workers=2), lm)
    s1, s2 = one.index(), two.index()
    assert two.workers == 2 and s2.workers == 2 and s2.computed == s1.computed > 5
    assert s2.engine_seconds > 0 and s2.bytes == s1.bytes
    for c in one.chunks():
        a, b = one.store.get(c.key), two.store.get(c.key)
        assert b is not None and torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(b.k, a.k, rtol=0, atol=2e-3)  # fp16 KV; thread counts may round differently
        torch.testing.assert_close(b.v, a.v, rtol=0, atol=2e-3)


def test_index_claims_chunks_in_priority_order_while_still_chunking(tmp_path, lm):  # noqa: F811
    """index() starts the workers once open, README and commit chunks are queued; the rest is chunked while
    they compute, and no chunk is claimed before one that outranks it."""
    make_fixture_repo(tmp_path / "ws")
    idx = Indexer(_cfg(tmp_path / "ws", cache_dir=tmp_path / "c", workers=2), lm)
    idx.set_open([tmp_path / "ws" / "pkg/geometry.py"])
    claimed = []
    pop = idx.queue._pop

    def claim():
        chunk = pop()
        if chunk is not None:
            claimed.append(idx._priority(chunk))
        return chunk

    idx.queue._pop = claim
    stats = idx.index()
    assert len(claimed) == stats.computed and claimed == sorted(claimed)
    assert claimed[0] == Priority.OPEN and Priority.README in claimed and Priority.COMMIT in claimed
    assert claimed[-1] == Priority.REST and not idx._background and not idx.queue._threads


def test_stop_releases_waiters_and_a_request_holds_the_workers():
    chunks = _chunks(40)
    started = []

    def work(chunk):
        started.append(chunk.path)
        time.sleep(0.01)

    q = PrecomputeQueue(work, workers=2)
    q.start()
    for c in chunks:
        q.submit(c, Priority.REST)
    with q.yielding():  # a request is running: no new chunk starts (the held ones finish)
        time.sleep(0.05)
        n = len(started)
        time.sleep(0.1)
        assert len(started) == n <= 2
    assert not q.wait(timeout=0.05)  # still pending
    result = []
    waiter = threading.Thread(target=lambda: result.append(q.wait()))
    waiter.start()
    q.stop()  # an index() waiting for the queue must not hang when the server shuts down
    waiter.join(timeout=10)
    assert not waiter.is_alive() and result == [False] and 0 < len(q) < 40
    left = len(q)
    assert left == len(chunks) - len(started)
    assert q.run_pending() == left and len(q) == 0 and len(started) == len(chunks)  # the rest, in this thread


def test_run_on_workers_gives_each_its_share_of_threads_and_restores_the_callers():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        assert run_on_workers(lambda: seen.append(torch.get_num_threads()) or 1, 2) == 2
        assert seen == [1, 1] and torch.get_num_threads() == 2
        assert run_on_workers(lambda: seen.append(torch.get_num_threads()) or 5, 1) == 5 and seen[-1] == 2
    finally:
        torch.set_num_threads(before)


def test_a_thread_that_cannot_start_stops_the_others(monkeypatch):
    started = []
    real_start = threading.Thread.start

    def start(self):
        if len(started) == 2:
            raise RuntimeError("can't start new thread")
        started.append(self)
        real_start(self)

    q = PrecomputeQueue(lambda chunk: None, workers=4)
    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):  # the system's error, not a join error
        q.start()
    monkeypatch.undo()
    assert all(not t.is_alive() for t in started) and q._threads == []


def test_worker_count_is_bounded(tmp_path):
    from indexer import IndexerConfig
    from indexer.config import MAX_WORKERS

    with pytest.raises(ValueError, match="workers must be in"):
        IndexerConfig(tmp_path, workers=MAX_WORKERS + 1)
    assert IndexerConfig(tmp_path, workers=MAX_WORKERS).workers == MAX_WORKERS


@pytest.mark.parametrize("bits", [0x7C00, 0xFC00, 0x7C01, 0x7E00, 0xFE00, 0xFFFF, 0x7FFF, 0xFC01])
@pytest.mark.parametrize("n", [1, 7, 4096])
def test_a_non_finite_half_is_found_wherever_it_is(bits, n):
    """inf and nan of either sign, anywhere in the tensor, among finite values up to the largest half."""
    from indexer.precompute import _finite

    x = torch.tensor([65504.0, -65504.0, 0.0, -0.0, 6e-8, -6e-8, 1.5, -2.5] * n, dtype=torch.float16)
    assert _finite(x) and _finite(x.reshape(-1, 8)) and _finite(x[::2])  # strided: the sum path
    for at in (0, len(x) // 2, len(x) - 1):
        y = x.clone()
        y.view(torch.int16)[at] = bits - (1 << 16) if bits >= 1 << 15 else bits
        assert not torch.isfinite(y).all()
        assert not _finite(y) and not _finite(y.reshape(-1, 8)) and not _finite(y[at:])
    assert _finite(x[:0])
