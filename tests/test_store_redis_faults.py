"""The Redis tier when things go wrong: a server that accepts and never answers, one that stalls and comes back,
a key of another type, URLs the tier cannot use. Real sockets and a real redis-server, a few seconds in all."""

import logging
import socket
import threading
import time

import pytest
import torch

from indexer import store_redis
from indexer.store_redis import RedisStore
from tests.test_store_disk import _key, _kv
from tests.test_store_redis import redis_url  # noqa: F401 - a fixture

torch.set_num_threads(1)
redis = pytest.importorskip("redis")


@pytest.fixture
def blackhole():
    """A listener on 127.0.0.1 that accepts connections and never replies: (port, accepted sockets)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.05)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    thread.join(timeout=5)
    srv.close()
    for conn in accepted:
        conn.close()


def _messages(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ttl_s > 0 (the indexer's default, 7 days) reads through a pipeline (GET + EXPIRE); 0 through a plain GET
@pytest.mark.parametrize("ttl_s", [0, 7 * 24 * 3600])
def test_silent_server_costs_one_timeout_then_no_network(blackhole, caplog, ttl_s):
    port, accepted = blackhole
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", ttl_s=ttl_s)
    kv = _kv(4)
    key = _key(kv)
    calls = [lambda: store.get(key), lambda: store.contains(key), lambda: store.put(key, kv), lambda: store.delete(key)]
    with caplog.at_level(logging.WARNING, logger="indexer.store_redis"):
        t0 = time.monotonic()
        assert store.get(key) is None  # waits out one read timeout (the connect itself succeeds)
        assert time.monotonic() - t0 < 2.0  # was 5 s
        t0 = time.monotonic()
        for i in range(40):
            assert not calls[i % 4]()  # a miss, a skipped write
            assert time.monotonic() - t0 < 0.5, f"call {i} waited for the network"  # was 5 s each
    assert store_redis._SOCKET_TIMEOUT_S < 1.0 and store_redis._CONNECT_TIMEOUT_S < 1.0
    assert store.skipped == 40 and len(accepted) == 1  # one connection, then nothing touched the network
    assert len(_messages(caplog, "unavailable")) == 1
    store.close()


@pytest.mark.parametrize("ttl_s", [0, 7 * 24 * 3600])
def test_stalled_server_is_skipped_probed_and_back(redis_url, caplog, ttl_s):  # noqa: F811
    store = RedisStore.from_url(redis_url, prefix=f"stall{ttl_s}:", down_s=0.3, ttl_s=ttl_s)
    admin = redis.Redis.from_url(redis_url)
    kv = _kv(4)
    key, other = _key(kv), _key(_kv(4, seed=1))
    store.put(key, kv)
    store.client.rpush(store.prefix + other.to_str(), b"x")
    pause_s = 1.5
    with caplog.at_level(logging.WARNING, logger="indexer.store_redis"):
        assert store.get(other) is None and store.dropped == 1  # a wrong-type key is no outage...
        admin.client_pause(int(pause_s * 1000))  # the server stops answering every client for 1.5 s
        until = time.monotonic() + pause_s
        assert store.get(key) is None  # one read timeout opens the breaker
        t0 = time.monotonic()
        assert store.get(key) is None and not store.contains(key)
        store.put(key, kv)
        assert time.monotonic() - t0 < 0.2 and store.skipped == 3
        time.sleep(store.down_s)
        assert time.monotonic() < until - 0.2  # (the next call still meets the stall)
        assert store.get(key) is None  # the probe: one more timeout, no second warning
        time.sleep(max(until - time.monotonic(), 0) + store.down_s)
        out = store.get(key)  # this probe is answered: the breaker closes
        assert store.contains(key)
    assert out is not None and torch.equal(out.k, kv.k.half())
    assert len(_messages(caplog, "unavailable")) == 1  # ...so the real outage still gets its warning
    assert len(_messages(caplog, "back after")) == 1
    admin.close()
    store.close()


def test_key_of_another_type_is_dropped_like_a_corrupt_entry(redis_url, caplog):  # noqa: F811
    store = RedisStore.from_url(redis_url, prefix="wt:")
    kv = _kv(4)
    key = _key(kv)
    name = "wt:" + key.to_str()
    store.client.rpush(name, b"not an entry")
    with caplog.at_level(logging.WARNING, logger="indexer.store_redis"):
        assert store.contains(key)  # presence only
        assert store.get(key) is None and store.dropped == 1
    assert store.client.exists(name) == 0 and store.skipped == 0
    assert any("WRONGTYPE" in m for m in _messages(caplog, "dropping corrupt redis entry"))
    assert not _messages(caplog, "unavailable")
    store.put(key, kv)
    assert torch.equal(store.get(key).v, kv.v.half())
    store.close()


@pytest.mark.parametrize("query", ["decode_responses=true", "decode_responses=1", "decode_responses=yes"])
def test_url_asking_for_decoded_responses_is_refused(query):
    with pytest.raises(ValueError, match="stores bytes"):
        RedisStore.from_url(f"redis://127.0.0.1:6379/0?{query}")


def test_url_turning_decoding_off_still_gets_bytes(redis_url):  # noqa: F811
    store = RedisStore.from_url(redis_url + "?decode_responses=false", prefix="dec:")  # redis-py: "false" is truthy
    kv = _kv(5)
    store.put(_key(kv), kv)
    assert torch.equal(store.get(_key(kv)).k, kv.k.half())
    store.close()


@pytest.mark.parametrize("tail", ["/abc", "/-1", "/1/2", "/0x1", "/?db=-1", "/1?db=-2"])
def test_url_with_a_bad_db_is_refused(tail):
    with pytest.raises(ValueError, match="non-negative integer"):
        RedisStore.from_url(f"redis://127.0.0.1:6391{tail}")


@pytest.mark.parametrize(
    "url, db",
    [("redis://127.0.0.1:6391", 0), ("redis://127.0.0.1:6391/", 0), ("redis://127.0.0.1:6391/3", 3),
     ("redis://127.0.0.1:6391/3?db=4", 4), ("unix:///tmp/kvblend-redis.sock?db=2", 2)],
)  # fmt: skip
def test_url_db_is_parsed(url, db):
    store = RedisStore.from_url(url)  # connects lazily: no server needed
    assert store.client.connection_pool.connection_kwargs.get("db", 0) == db
    assert store.client.connection_pool.connection_kwargs["decode_responses"] is False
