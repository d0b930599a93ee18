"""Memory tier, tiered store, factory, keys and configs."""

import pytest
import torch

from indexer import IndexerConfig, StoreConfig, TieredStore, make_store
from indexer.keys import ChunkKey, chunk_key
from indexer.store import kv_nbytes
from indexer.store_disk import DiskStore
from indexer.store_memory import MemoryStore
from tests.test_store_disk import _key, _kv

torch.set_num_threads(1)


def test_chunk_key_round_trip_and_hash():
    k = chunk_key("ab" * 16, [1, 2, 3])
    assert ChunkKey.from_str(k.to_str()) == k and k.relpath().endswith(f"/{k.token_hash}.kv")
    assert chunk_key("ab" * 16, [1, 2, 3]) == k
    assert chunk_key("ab" * 16, [1, 2, 4]) != k and chunk_key("cd" * 16, [1, 2, 3]) != k
    assert chunk_key("ab" * 16, [1, 2, 3], prefix=[7]) != k
    assert chunk_key("ab" * 16, [1], prefix=[2]) != chunk_key("ab" * 16, [2, 1])
    for bad in ("nothing", "xyz@abc", "AB@cd"):
        with pytest.raises(ValueError):
            ChunkKey.from_str(bad)


def test_memory_lru_is_bounded_in_bytes():
    kvs = [_kv(32, seed=i) for i in range(5)]
    size = kv_nbytes(kvs[0])
    m = MemoryStore(3 * size)
    for kv in kvs[:3]:
        m.put(_key(kv), kv)
    m.get(_key(kvs[0]))
    m.put(_key(kvs[3]), kvs[3])
    assert m.nbytes() == 3 * size and len(m) == 3 and m.evictions == 1
    assert not m.contains(_key(kvs[1])) and m.contains(_key(kvs[0]))
    m.put(_key(_kv(1000)), _kv(1000))  # larger than the whole budget: not stored, nothing evicted
    assert len(m) == 3


def test_tiered_store_promotes_and_returns_model_dtype(tmp_path):
    mem, disk = MemoryStore(1 << 20), DiskStore(tmp_path, 1 << 30)
    store = TieredStore([mem, disk], dtype=torch.float32)
    kv = _kv(16)
    disk.put(_key(kv), kv)
    out = store.get(_key(kv))
    assert out.k.dtype == torch.float32 and torch.equal(out.k, kv.k.half().float())
    assert store.hits == {"memory": 0, "disk": 1} and mem.contains(_key(kv))
    assert store.get(_key(kv)) is not None and store.hits["memory"] == 1
    assert store.get(_key(_kv(3, seed=5))) is None and store.misses == 1
    store.delete(_key(kv))
    assert not store.contains(_key(kv))


def test_factory_and_config_errors(tmp_path):
    cfg = IndexerConfig(tmp_path)
    assert cfg.store.disk_dir == tmp_path.resolve() / ".kvblend" / "cache" / "kv"
    assert isinstance(make_store("memory", cfg.store), MemoryStore)
    with pytest.raises(ValueError, match="unknown store tier 'tape'"):
        make_store("tape", cfg.store)
    with pytest.raises(ValueError, match="unknown store tiers"):
        StoreConfig(tiers=("memory", "tape"))
    with pytest.raises(ValueError, match="redis_url"):
        StoreConfig(tiers=("redis",))
    with pytest.raises(ValueError, match="not a directory"):
        IndexerConfig(tmp_path / "missing")
    with pytest.raises(ValueError, match="min_chunk_tokens"):
        IndexerConfig(tmp_path, max_chunk_tokens=64, min_chunk_tokens=64)
