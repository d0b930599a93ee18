"""The memory tier: an LRU of ChunkKV bounded in bytes (entries stay in the dtype and device they came in)."""

from __future__ import annotations

import collections
import logging
import threading

from blend.cacheblend import ChunkKV
from indexer.keys import ChunkKey
from indexer.store import KVStore, kv_nbytes

log = logging.getLogger(__name__)


class MemoryStore(KVStore):
    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[ChunkKey, tuple[ChunkKV, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: ChunkKey) -> ChunkKV | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: ChunkKey, kv: ChunkKV) -> None:
        size = kv_nbytes(kv)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (kv, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed
                self.evictions += 1

    def contains(self, key: ChunkKey) -> bool:
        with self._lock:
            return key in self._items

    def delete(self, key: ChunkKey) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
