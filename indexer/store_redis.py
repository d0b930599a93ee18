"""The Redis tier: entries shared by a team or a fleet, keyed <prefix><fingerprint>@<token hash>.

Values are the bytes of `indexer.serde` (verified on load like disk entries). The server's `maxmemory`
with `allkeys-lru` bounds its bytes; entries also expire `ttl_s` after their last read or write (a hit sets
the TTL again in the same round trip), so a chunk the team reads every day stays. A server that cannot be reached
is a miss, never an error of the completion path, and costs at most one short timeout per `down_s`: a
connection error or a timeout opens a circuit breaker, the tier is skipped without touching the network for
`down_s`, then one call tries again (logged once when the breaker opens, once when it closes). A key holding
something else (another type, bytes that fail verification) is dropped like a corrupt disk entry, not an outage.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from urllib.parse import parse_qs, unquote, urlparse

from blend.cacheblend import ChunkKV
from indexer import serde
from indexer.keys import ChunkKey
from indexer.store import KVStore

log = logging.getLogger(__name__)

# A cache must answer faster than recomputing: a miss costs one chunk's prefill (tens to hundreds of ms), so
# a server that is silent for half a second is down as far as completion is concerned. The read timeout
# bounds a silence, not a transfer (a 14 MiB entry keeps the socket busy), and a server on the LAN accepts in
# well under a millisecond. `?socket_timeout=` / `?socket_connect_timeout=` in the URL override these.
_CONNECT_TIMEOUT_S = 0.5
_SOCKET_TIMEOUT_S = 0.5
# How long the tier is skipped after a failure: a restarting server or a network blip is usually over by
# then, and one probe per period costs a completion at most one timeout.
_DOWN_S = 30.0


class RedisStore(KVStore):
    name = "redis"

    def __init__(self, client, prefix: str = "kvblend:", ttl_s: int = 0, shape=None, down_s: float = _DOWN_S) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.shape = shape
        self.down_s = down_s
        self.dropped = 0  # corrupt or wrong-type entries deleted
        self.skipped = 0  # calls answered without the network while the tier was down
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time the breaker opened; None: closed
        self._retry_at = 0.0  # while open, the first call at or after this time probes the server
        self._refusals: set[str] = set()  # kinds of refusal (OOM, READONLY, ...) already logged

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "kvblend:", ttl_s: int = 0, shape=None, down_s: float = _DOWN_S
    ) -> RedisStore:
        """A store on the server at `url` (redis://, rediss:// or unix://). Raises ValueError for a URL the
        tier cannot use: `decode_responses` (values are bytes) or a db that is not a non-negative integer
        (redis-py would silently use db 0)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.connection import parse_url, to_bool
        from redis.retry import Retry

        if not url:
            raise ValueError("the redis tier needs a url, e.g. redis://127.0.0.1:6379/0")
        opts = parse_url(url)  # ValueError on another scheme or a query value redis-py cannot cast
        # redis-py passes this option through as a string ("false" included, which is truthy)
        if to_bool(opts.pop("decode_responses", None)):
            raise ValueError(f"the redis tier stores bytes: remove decode_responses from {url!r}")
        parts = urlparse(url)
        db = unquote(parts.path).strip("/")  # redis-py drops a db it cannot parse (and reads /1/2 as 12)
        if parts.scheme != "unix" and "db" not in parse_qs(parts.query) and db:
            if not (db.isascii() and db.isdigit()):
                raise ValueError(f"redis db must be a non-negative integer, got {db!r} in {url!r}")
            opts["db"] = int(db)
        if opts.get("db", 0) < 0:
            raise ValueError(f"redis db must be a non-negative integer, got {opts['db']} in {url!r}")
        # no retries inside redis-py (its default is 3 with backoff): the breaker decides when to try again
        timeouts = {"socket_connect_timeout": _CONNECT_TIMEOUT_S, "socket_timeout": _SOCKET_TIMEOUT_S}
        pool = redis.ConnectionPool(**{"retry": Retry(NoBackoff(), 0), **timeouts, **opts, "decode_responses": False})
        client = redis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # close() disconnects the pool (as Redis.from_url does)
        return cls(client, prefix, ttl_s, shape, down_s)

    def _name(self, key: ChunkKey) -> str:
        return self.prefix + key.to_str()

    def _allow(self) -> bool:
        """Whether a call may touch the server: always while the breaker is closed; while it is open, one
        call once `down_s` has passed (the probe; the others keep skipping until it fails or succeeds)."""
        if self._down_since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self._down_since is not None and now < self._retry_at:
                self.skipped += 1
                return False
            self._retry_at = now + self.down_s
            return True

    def _up(self) -> None:
        """The server answered: close the breaker."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for, self._down_since = time.monotonic() - self._down_since, None
        log.warning("redis tier back after %.1f s", down_for)  # a warning: it ends the one that opened it

    def _fail(self, e: Exception) -> None:
        """No answer (refused, reset, timed out): open the breaker, warning once per outage."""
        with self._lock:
            now = time.monotonic()
            self._retry_at = now + self.down_s
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:
            log.warning("redis tier unavailable, skipped for %g s at a time (treated as a miss): %s", self.down_s, e)
        else:
            log.debug("redis tier still unavailable: %s", e)

    def _refused(self, e: Exception) -> None:
        """The server answered with an error that is about it, not a key (OOM, READONLY, NOPERM): a miss or a
        skipped write, logged once per kind."""
        self._up()
        kind = str(e).split(" ", 1)[0]
        with self._lock:
            new = kind not in self._refusals
            self._refusals.add(kind)
        if new:
            log.warning("redis tier refused a command (treated as a miss; logged once): %s", e)

    def _drop(self, key: ChunkKey, why: object) -> None:
        log.warning("dropping corrupt redis entry %s: %s", key.to_str(), why)
        self.dropped += 1
        self.delete(key)

    def get(self, key: ChunkKey) -> ChunkKV | None:
        import redis

        if not self._allow():
            return None
        try:
            data = self._read(self._name(key))
        except redis.ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):
                self._refused(e)
                return None
            self._up()
            self._drop(key, e)  # another program's key in our namespace; put overwrites it anyway
            return None
        except redis.RedisError as e:
            self._fail(e)
            return None
        self._up()
        if data is None:
            return None
        try:
            return serde.decode(data, key, self.shape)
        except serde.CorruptEntry as e:
            self._drop(key, e)
            return None

    def _read(self, name: str) -> bytes | None:
        """The value at `name`, its TTL set to `ttl_s` again (a read is a use): GET and EXPIRE pipelined, one
        round trip. Not GETEX: Redis before 6.2 (Ubuntu 22.04 and Debian 11 ship 6.0) answers it "unknown
        command", which would make every read a miss. Raises the GET's own error (WRONGTYPE, ...) as a plain
        command would; EXPIRE succeeds wherever GET fails, on any key or none."""
        if not self.ttl_s:
            return self.client.get(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(name)
        pipe.expire(name, self.ttl_s)
        data, _ = pipe.execute(raise_on_error=False)  # errors come back as values, not annotated with "Command # 1"
        if isinstance(data, Exception):
            raise data
        return data

    def put(self, key: ChunkKey, kv: ChunkKV) -> None:
        import redis

        try:
            data = serde.encode(key, kv)
        except ValueError as e:
            log.warning("%s", e)
            return
        if not self._allow():
            return
        try:
            self.client.set(self._name(key), data, ex=self.ttl_s or None)
        except redis.ResponseError as e:
            self._refused(e)
            return
        except redis.RedisError as e:
            self._fail(e)
            return
        self._up()

    def contains(self, key: ChunkKey) -> bool:
        import redis

        if not self._allow():
            return False
        try:
            found = bool(self.client.exists(self._name(key)))
        except redis.ResponseError as e:
            self._refused(e)
            return False
        except redis.RedisError as e:
            self._fail(e)
            return False
        self._up()
        return found

    def delete(self, key: ChunkKey) -> None:
        import redis

        if not self._allow():
            return
        try:
            self.client.delete(self._name(key))
        except redis.ResponseError as e:
            self._refused(e)
            return
        except redis.RedisError as e:
            self._fail(e)
            return
        self._up()

    def nbytes(self) -> int:
        return -1  # the server's INFO memory covers every user of it, not just our keys

    def __len__(self) -> int:
        """Keys under our prefix, every fingerprint's (one SCAN of the server's keyspace: O(its keys), for stats
        and tests); 0 while the server cannot be reached."""
        import redis

        if not self._allow():
            return 0
        match = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"  # the prefix literally, then anything
        try:
            n = sum(1 for _ in self.client.scan_iter(match=match, count=1000))
        except redis.ResponseError as e:
            self._refused(e)
            return 0
        except redis.RedisError as e:
            self._fail(e)
            return 0
        self._up()
        return n

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass
