"""The Redis tier: entries shared by a team or a fleet, keyed <prefix><fingerprint>@<token hash>.

Values are the bytes of `indexer.serde` (verified on load like disk entries). The server's `maxmemory`
with `allkeys-lru` bounds its bytes; entries also expire after `ttl_s`. A server that cannot be reached
is a miss (logged once), never an error of the completion path.
"""

from __future__ import annotations

import logging

from blend.cacheblend import ChunkKV
from indexer import serde
from indexer.keys import ChunkKey
from indexer.store import KVStore

log = logging.getLogger(__name__)


class RedisStore(KVStore):
    name = "redis"

    def __init__(self, client, prefix: str = "kvblend:", ttl_s: int = 0, shape=None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.shape = shape
        self.dropped = 0
        self._warned = False

    @classmethod
    def from_url(cls, url: str, prefix: str = "kvblend:", ttl_s: int = 0, shape=None) -> RedisStore:
        import redis

        if not url:
            raise ValueError("the redis tier needs a url, e.g. redis://127.0.0.1:6379/0")
        return cls(redis.Redis.from_url(url, socket_timeout=5.0), prefix, ttl_s, shape)

    def _name(self, key: ChunkKey) -> str:
        return self.prefix + key.to_str()

    def _down(self, e: Exception) -> None:
        if not self._warned:
            log.warning("redis tier unavailable (treated as a miss): %s", e)
            self._warned = True

    def get(self, key: ChunkKey) -> ChunkKV | None:
        import redis

        try:
            data = self.client.get(self._name(key))
        except redis.RedisError as e:
            self._down(e)
            return None
        if data is None:
            return None
        try:
            return serde.decode(data, key, self.shape)
        except serde.CorruptEntry as e:
            log.warning("dropping corrupt redis entry %s: %s", key.to_str(), e)
            self.dropped += 1
            self.delete(key)
            return None

    def put(self, key: ChunkKey, kv: ChunkKV) -> None:
        import redis

        try:
            data = serde.encode(key, kv)
        except ValueError as e:
            log.warning("%s", e)
            return
        try:
            self.client.set(self._name(key), data, ex=self.ttl_s or None)
        except redis.RedisError as e:
            self._down(e)

    def contains(self, key: ChunkKey) -> bool:
        import redis

        try:
            return bool(self.client.exists(self._name(key)))
        except redis.RedisError as e:
            self._down(e)
            return False

    def delete(self, key: ChunkKey) -> None:
        import redis

        try:
            self.client.delete(self._name(key))
        except redis.RedisError as e:
            self._down(e)

    def nbytes(self) -> int:
        return -1  # the server's INFO memory covers every user of it, not just our keys

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass
