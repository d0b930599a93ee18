"""Tiering semantics: what each tier gives back is what was put, across promotion, eviction and restarts;
one contract test over every tier; the KV hand-off's tiers."""

import os
import threading

import pytest
import torch

from blend.loader import load_model
from indexer import Indexer, IndexerConfig, serde
from indexer.keys import chunk_key
from indexer.store import TieredStore, kv_nbytes
from indexer.store_disk import DiskStore
from indexer.store_memory import MemoryStore
from indexer.store_redis import RedisStore
from kvblend import kv_handoff
from kvblend.kv_handoff import KVHandoff, handoff_stats
from tests.test_store_disk import SHAPE, _key, _kv
from tests.test_store_redis import redis_url  # noqa: F401 - the module's redis-server fixture

torch.set_num_threads(1)


def _same(out, kv) -> bool:
    """Bits, dtype, shape, tokens and positions of a stored entry equal the fp16 rounding of `kv`."""
    return (
        out.k.dtype == out.v.dtype == torch.float16
        and torch.equal(out.k, kv.k.half())
        and torch.equal(out.v, kv.v.half())
        and torch.equal(out.tokens, kv.tokens)
        and torch.equal(out.positions, kv.positions)
    )


def _odd_kv(seed=0):
    """Scattered positions and int32 token ids: the header's less common forms."""
    return _kv(20, seed=seed, vocab=200_000, positions=torch.tensor([3, *range(10, 29)]))


@pytest.fixture(params=["memory", "disk", "redis", "tiered"])
def tier(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore(1 << 20)
    elif request.param == "disk":
        yield DiskStore(tmp_path, 1 << 30, shape=SHAPE)
    elif request.param == "tiered":
        yield TieredStore([MemoryStore(1 << 20), DiskStore(tmp_path, 1 << 30, shape=SHAPE)])
    else:
        store = RedisStore.from_url(request.getfixturevalue("redis_url"), prefix=f"c{os.getpid()}:", shape=SHAPE)
        yield store
        store.client.flushdb()
        store.close()


def test_every_tier_keeps_the_contract(tier):
    """`len` is the entries a tier holds (Redis and the tiered store had none; a tiered store counts an entry in
    each of its tiers, as `nbytes` counts its bytes); an empty store is still true (`store or default`)."""
    kvs = [_odd_kv(seed=1), _kv(7, seed=2, dtype=torch.float16)]
    keys = [_key(kv) for kv in kvs]
    copies = len(tier.tiers) if isinstance(tier, TieredStore) else 1
    assert len(tier) == 0 and tier
    assert tier.get(keys[0]) is None and not tier.contains(keys[0])
    for key, kv in zip(keys, kvs, strict=True):
        tier.put(key, kv)
    tier.put(keys[0], kvs[0])  # idempotent
    for key, kv in zip(keys, kvs, strict=True):
        assert tier.contains(key)
        out = tier.get(key)
        assert torch.equal(out.k.half(), kv.k.half()) and torch.equal(out.v.half(), kv.v.half())
        assert torch.equal(out.tokens, kv.tokens) and torch.equal(out.positions, kv.positions)
    other = chunk_key("cd" * 16, kvs[0].tokens.tolist())  # same tokens, another model: never served
    assert tier.get(other) is None and not tier.contains(other)
    assert len(tier) == 2 * copies
    if tier.name != "redis":  # the server does not say how many of its bytes are ours
        assert tier.nbytes() > 0
    tier.delete(keys[0])
    tier.delete(keys[0])  # deleting what is gone is a no-op
    assert tier.get(keys[0]) is None and not tier.contains(keys[0]) and tier.get(keys[1]) is not None
    assert len(tier) == copies


def test_indexer_uses_the_empty_store_it_is_given(tmp_path, hf_checkpoints):
    """The indexer takes `store or TieredStore.from_config(...)`: an empty memory or disk store was false (its
    `__len__`), so the one passed in was silently replaced by a memory + disk store under the workspace."""
    lm = load_model(hf_checkpoints["llama-gqa"], device="cpu")
    for store in (MemoryStore(1 << 20), DiskStore(tmp_path / "kv", 1 << 20), TieredStore([MemoryStore(1 << 20)])):
        assert Indexer(IndexerConfig(tmp_path, cache_dir=tmp_path / "cache"), lm, store=store).store is store
    assert not (tmp_path / "cache").exists()


def test_memory_tier_holds_fp16_like_the_others(tmp_path):
    """A tiered store's memory tier kept fp32 KV as given: a chunk served from memory had other bits than the
    same chunk once it was evicted and read back from disk, and took twice the bytes."""
    mem, disk = MemoryStore(1 << 20), DiskStore(tmp_path, 1 << 30)
    store = TieredStore([mem, disk], dtype=torch.float32)
    kv = _odd_kv()
    store.put(_key(kv), kv)
    assert _same(mem.get(_key(kv)), kv) and _same(disk.get(_key(kv)), kv)
    assert mem.nbytes() == kv_nbytes(mem.get(_key(kv))) and mem.get(_key(kv)).k.nbytes == kv.k.numel() * 2
    from_memory = store.get(_key(kv))
    mem.delete(_key(kv))
    from_disk = store.get(_key(kv))
    assert store.hits == {"memory": 1, "disk": 1}
    assert torch.equal(from_memory.k, from_disk.k) and from_memory.k.dtype == torch.float32


def test_fp16_overflow_is_stored_in_no_tier(tmp_path):
    mem, disk = MemoryStore(1 << 20), DiskStore(tmp_path, 1 << 30)
    store = TieredStore([mem, disk])
    kv = _kv(4)
    kv.k[0, 0, 0, 0] = 1e6
    store.put(_key(kv), kv)
    store.put_cold(_key(kv), kv)
    assert len(mem) == 0 and len(disk) == 0


def test_promotion_from_disk_and_redis_is_exact(tmp_path, redis_url):  # noqa: F811
    mem, disk = MemoryStore(1 << 20), DiskStore(tmp_path, 1 << 30, mmap_min_bytes=0)
    red = RedisStore.from_url(redis_url, prefix="promo:", shape=SHAPE)
    store = TieredStore([mem, disk, red], dtype=torch.float32)
    kv, cold = _odd_kv(seed=3), _kv(9, seed=4)
    red.put(_key(kv), kv)
    store.put_cold(_key(cold), cold)
    assert not mem.contains(_key(cold)) and disk.contains(_key(cold))
    out = store.get(_key(kv))
    assert torch.equal(out.k, kv.k.half().float()) and torch.equal(out.positions, kv.positions)
    assert _same(mem.get(_key(kv)), kv) and _same(disk.get(_key(kv)), kv)
    assert mem.nbytes() == kv_nbytes(mem.get(_key(kv))) and disk.size_of(_key(kv)) > 0
    assert store.get(_key(cold)) is not None and _same(mem.get(_key(cold)), cold)
    assert store.hits == {"memory": 0, "disk": 1, "redis": 1}
    red.close()


def test_entry_larger_than_a_tier_budget_skips_that_tier_only(tmp_path):
    kv = _kv(64, dtype=torch.float16)
    mem, disk = MemoryStore(kv_nbytes(kv) - 1), DiskStore(tmp_path / "big", 1 << 30)
    small = DiskStore(tmp_path / "small", 1000)
    store = TieredStore([mem, disk, small])
    store.put(_key(kv), kv)
    assert len(mem) == 0 and mem.nbytes() == 0 and len(small) == 0 and small.nbytes() == 0
    assert not list((tmp_path / "small").rglob("*.kv")) and _same(store.get(_key(kv)), kv)


def test_disk_lru_survives_a_restart(tmp_path):
    """The order a new process rebuilds is by last use: a restart evicted the oldest written entry however
    often it was read (reads did not touch the file's mtime)."""
    kvs = [_kv(32, seed=i) for i in range(4)]
    disk = DiskStore(tmp_path, 1 << 30)
    for i, kv in enumerate(kvs[:3]):
        disk.put(_key(kv), kv)
        os.utime(tmp_path / _key(kv).relpath(), (1000 + i, 1000 + i))  # written long ago, in this order
    assert _same(disk.get(_key(kvs[0])), kvs[0])
    size = disk.size_of(_key(kvs[0]))
    again = DiskStore(tmp_path, 3 * size)
    again.put(_key(kvs[3]), kvs[3])
    assert again.contains(_key(kvs[0])) and not again.contains(_key(kvs[1])) and again.contains(_key(kvs[2]))
    assert again.nbytes() == 3 * size and len(again) == 3


def test_a_chunk_served_from_memory_stays_recent_on_disk(tmp_path, monkeypatch):
    """A memory-tier hit counts as a use of the disk entry below it: a chunk read from memory all day kept its
    old mtime and was the first evicted after a restart."""
    import indexer.store_disk as store_disk

    kvs = [_kv(32, seed=i) for i in range(4)]
    DiskStore(tmp_path, 1 << 30)
    for i, kv in enumerate(kvs[:3]):
        DiskStore(tmp_path, 1 << 30).put(_key(kv), kv)
        os.utime(tmp_path / _key(kv).relpath(), (1000 + i, 1000 + i))  # written long ago, in this order
    disk = DiskStore(tmp_path, 1 << 30)
    tiered = TieredStore([MemoryStore(1 << 30), disk])
    assert _same(tiered.get(_key(kvs[0])), kvs[0])  # from disk (its mtime moved), now in memory
    os.utime(tmp_path / _key(kvs[0]).relpath(), (1000, 1000))  # hours pass; only memory serves it
    later, utime, calls = store_disk.time.time() + 3600, os.utime, []
    monkeypatch.setattr(store_disk.time, "time", lambda: later)
    monkeypatch.setattr(store_disk.os, "utime", lambda *a: calls.append(a) or utime(*a))
    for _ in range(3):
        assert _same(tiered.get(_key(kvs[0])), kvs[0])
    assert tiered.hits["memory"] == 3 and len(calls) == 1  # a hot chunk costs no metadata write per use
    monkeypatch.undo()
    size = disk.size_of(_key(kvs[0]))
    again = DiskStore(tmp_path, 3 * size)  # a restart
    again.put(_key(kvs[3]), kvs[3])
    assert again.contains(_key(kvs[0])) and not again.contains(_key(kvs[1])) and again.contains(_key(kvs[2]))


def test_entry_deleted_while_read_is_served_but_not_counted(tmp_path, monkeypatch):
    """A get racing a delete or an eviction counted the entry again after it was gone: bytes of no file, which
    made the next puts evict live entries."""
    disk = DiskStore(tmp_path, 1 << 30, mmap_min_bytes=0)
    kv = _kv(64)
    disk.put(_key(kv), kv)
    decode = serde.decode

    def deleted_meanwhile(buf, key, shape):
        out = decode(buf, key, shape)
        disk.delete(key)  # another thread's delete (or eviction) lands while this one verifies
        return out

    monkeypatch.setattr(serde, "decode", deleted_meanwhile)
    out = disk.get(_key(kv))
    assert _same(out, kv)  # the mapping outlives the file
    assert disk.nbytes() == 0 and len(disk) == 0 and not disk.contains(_key(kv))


def test_memory_tier_under_concurrent_put_and_get():
    kvs = [_kv(8, seed=i) for i in range(24)]
    size = kv_nbytes(kvs[0])
    mem = MemoryStore(10 * size)
    wrong: list = []

    def worker(part):
        for _ in range(30):
            for kv in part:
                mem.put(_key(kv), kv)
                got = mem.get(_key(kvs[0]))
                if got is not None and not torch.equal(got.k, kvs[0].k):
                    wrong.append(got)

    threads = [threading.Thread(target=worker, args=(kvs[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and len(mem) <= 10 and mem.nbytes() == len(mem) * size
    assert all(torch.equal(mem.get(k).k, kv.k) for kv in kvs if mem.contains(k := _key(kv)))


def test_handoff_memory_put_get_drop_and_stats():
    h = KVHandoff()
    k, v = torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4)
    before = handoff_stats()
    key = h.put([1, 2, 3, 4, 5], k, v)
    assert h.has(key) and key.matches([1, 2, 3, 4, 5, 6]) and not key.matches([1, 2, 3, 4, 6])
    got = h.get(key)
    assert torch.equal(got[0], k) and torch.equal(got[1], v)
    h.drop(key)
    assert not h.has(key) and h.get(key) is None
    after = handoff_stats()
    for name, n in (("puts", 1), ("loads", 1), ("misses", 1)):
        assert after.get(name, 0) == before.get(name, 0) + n
    with pytest.raises(ValueError, match="must be"):
        h.put([1, 2], k, v)


def test_handoff_file_round_trip_is_exact(tmp_path):
    h = KVHandoff(tmp_path)
    k, v = torch.randn(2, 1, 5, 4).half(), torch.randn(2, 1, 5, 4).bfloat16()
    key = h.put([9, 8, 7, 6, 5], k, v)
    got = KVHandoff(tmp_path).get(key)  # another process's connector on the directory
    assert got[0].dtype == k.dtype and torch.equal(got[0], k) and torch.equal(got[1], v)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key.to_str()}.safetensors"]


def test_handoff_write_killed_midway_leaves_no_entry(tmp_path, monkeypatch):
    """The file was written in place: a connector reading it meanwhile (or after the writer died) found a
    half-written file, and `get` raised inside vLLM's worker."""
    save = kv_handoff.save_file

    def killed(tensors, path):
        save(tensors, path)
        with open(path, "r+b") as f:
            f.truncate(40)
        raise KeyboardInterrupt

    monkeypatch.setattr(kv_handoff, "save_file", killed)
    h = KVHandoff(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        h.put([1, 2, 3], torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    key = kv_handoff.HandoffKey.of([1, 2, 3])
    assert not h.has(key) and h.get(key) is None and not list(tmp_path.iterdir())


def test_handoff_damaged_or_vanished_file_is_a_miss(tmp_path, monkeypatch):
    h = KVHandoff(tmp_path)
    key = h.put([4, 5, 6], torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    path = tmp_path / f"{key.to_str()}.safetensors"
    path.write_bytes(path.read_bytes()[:30])
    before = handoff_stats().get("misses", 0)
    assert h.get(key) is None and handoff_stats().get("misses", 0) == before + 1
    path.unlink()
    monkeypatch.setattr(type(path), "is_file", lambda self: True)  # `has` said yes, then its engine dropped it
    assert h.get(key) is None
