"""The KV store: a small ABC, one class per tier, a factory, and the tiered store the indexer uses.

Contract of a tier (`KVStore`):
- `get(key)` returns the ChunkKV stored under `key`, or None on a miss. An entry that fails verification
  (truncated, bit-flipped, another key or shape) is deleted and reported as a miss: it is never served.
- `put(key, kv)` stores it (idempotent) and may evict other entries to stay within the tier's byte budget.
- `contains(key)` is a cheap check (presence, size); a later `get` may still find the entry corrupt.
- `len(store)` is the number of entries the tier holds (all fingerprints), as `nbytes()` is their bytes; not
  cheap on every tier (Redis scans the server's keys): for stats and tests, not the completion path. A store
  is true even when empty, so `store or default` keeps an empty store that was passed in.
- Tiers are thread-safe; a tier that cannot reach its backend logs and behaves as a miss.
"""

from __future__ import annotations

import abc
import logging

import torch

from blend.cacheblend import ChunkKV
from indexer.config import StoreConfig
from indexer.keys import ChunkKey

log = logging.getLogger(__name__)


class KVStore(abc.ABC):
    name: str = "?"
    write_error: str | None = None  # why this tier cannot keep what it is given now (the disk tier sets it)

    @abc.abstractmethod
    def get(self, key: ChunkKey) -> ChunkKV | None: ...

    @abc.abstractmethod
    def put(self, key: ChunkKey, kv: ChunkKV) -> None: ...

    @abc.abstractmethod
    def contains(self, key: ChunkKey) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: ChunkKey) -> None: ...

    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes this tier holds (-1 when the backend does not say)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Entries this tier holds (0 when its backend cannot be reached)."""

    def touch(self, key: ChunkKey) -> None:  # noqa: B027 - optional hook
        """`key` was just served by a faster tier: count it as used here too (the disk tier's LRU order; the
        others keep none worth a call per hit: Redis would cost a round trip)."""

    def __bool__(self) -> bool:
        return True  # without it an empty store is false (`__len__`), and `store or make_default()` drops it

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def kv_nbytes(kv: ChunkKV) -> int:
    return sum(t.numel() * t.element_size() for t in (kv.tokens, kv.k, kv.v, kv.positions))


def make_store(name: str, cfg: StoreConfig, shape: tuple[int, int, int] | None = None) -> KVStore:
    """One tier by name: memory | disk | redis. `shape`: (layers, kv heads, head_dim) entries must have."""
    if name == "memory":
        from indexer.store_memory import MemoryStore

        return MemoryStore(cfg.memory_bytes)
    if name == "disk":
        from indexer.store_disk import DiskStore

        assert cfg.disk_dir is not None, "StoreConfig.disk_dir is filled in by IndexerConfig"
        return DiskStore(
            cfg.disk_dir,
            cfg.disk_bytes,
            shape=shape,
            use_mmap=cfg.mmap,
            fsync=cfg.fsync,
            mmap_min_bytes=cfg.mmap_min_bytes,
        )
    if name == "redis":
        from indexer.store_redis import RedisStore

        return RedisStore.from_url(cfg.redis_url or "", cfg.redis_prefix, cfg.redis_ttl_s, shape=shape)
    raise ValueError(f"unknown store tier {name!r}: choose from memory, disk, redis")


class TieredStore(KVStore):
    """Reads tiers fastest first and copies a hit into the faster tiers; writes through to every tier.

    Entries come back on `device` in `dtype` (the model's); every tier keeps them in fp16 (memory included,
    which holds twice the chunks of an fp32 cache that way).
    """

    name = "tiered"

    def __init__(self, tiers: list[KVStore], dtype: torch.dtype | None = None, device=None) -> None:
        if not tiers:
            raise ValueError("a tiered store needs at least one tier")
        self.tiers = tiers
        self.dtype, self.device = dtype, device
        self.hits = {t.name: 0 for t in tiers}
        self.misses = 0

    @classmethod
    def from_config(cls, cfg: StoreConfig, shape=None, dtype=None, device=None) -> TieredStore:
        return cls([make_store(name, cfg, shape) for name in cfg.tiers], dtype, device)

    def tier(self, name: str) -> KVStore | None:
        return next((t for t in self.tiers if t.name == name), None)

    def _out(self, kv: ChunkKV) -> ChunkKV:
        if self.dtype is None and self.device is None:
            return kv
        k = kv.k.to(device=self.device, dtype=self.dtype or kv.k.dtype)
        v = kv.v.to(device=self.device, dtype=self.dtype or kv.v.dtype)
        return ChunkKV(kv.tokens.to(self.device or kv.tokens.device), k, v, kv.positions.to(k.device))

    def get(self, key: ChunkKey) -> ChunkKV | None:
        for i, t in enumerate(self.tiers):
            kv = t.get(key)
            if kv is None:
                continue
            self.hits[t.name] += 1
            out = self._out(kv)
            for upper in self.tiers[:i]:
                upper.put(key, kv)
            for lower in self.tiers[i + 1 :]:
                lower.touch(key)
            return out
        self.misses += 1
        return None

    def put(self, key: ChunkKey, kv: ChunkKV) -> None:
        kv = _fp16(key, kv)
        if kv is None:
            return
        for t in self.tiers:
            t.put(key, kv)

    def put_cold(self, key: ChunkKey, kv: ChunkKV) -> None:
        """Write to every tier but memory (to memory as well when it is the only tier): for chunks nobody is
        reading now, which a later `get` promotes. While a tier below cannot be written (a read-only or full
        disk), memory keeps the chunk too: otherwise it would be kept nowhere and computed again on every use."""
        kv = _fp16(key, kv)
        if kv is None:
            return
        below = [t for t in self.tiers if t.name != "memory"]
        for t in below or self.tiers:
            t.put(key, kv)
        if below and any(t.write_error is not None for t in below):
            for t in self.tiers:
                if t.name == "memory":
                    t.put(key, kv)

    def contains(self, key: ChunkKey) -> bool:
        return any(t.contains(key) for t in self.tiers)

    def delete(self, key: ChunkKey) -> None:
        for t in self.tiers:
            t.delete(key)

    def nbytes(self) -> int:
        return sum(max(t.nbytes(), 0) for t in self.tiers)

    def __len__(self) -> int:
        """Entries held in all tiers, counted in every tier that holds one (a chunk in memory and on disk counts
        twice, as its bytes do in `nbytes`); one tier's: `len(store.tier(name))`."""
        return sum(len(t) for t in self.tiers)

    def close(self) -> None:
        for t in self.tiers:
            t.close()


def _fp16(key: ChunkKey, kv: ChunkKV) -> ChunkKV | None:
    """`kv` with k, v rounded to fp16, as disk and Redis store them: the memory tier kept other dtypes as given,
    so a chunk served from memory had other bits (and twice the bytes, for fp32) than the same chunk from disk.
    None (logged) when fp16 overflows: such KV is stored in no tier, as `serde` refuses it."""
    if kv.k.dtype == torch.float16 and kv.v.dtype == torch.float16:
        return kv
    k, v = kv.k.to(torch.float16), kv.v.to(torch.float16)
    if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(v).all())):
        log.warning("KV of %s is not finite in fp16 (overflow): not stored", key.to_str())
        return None
    return ChunkKV(kv.tokens, k, v, kv.positions)
