"""The Redis tier against a real redis-server started here on 127.0.0.1 (skipped only without the binary)."""

import shutil
import socket
import subprocess
import time

import pytest
import torch

from blend.loader import load_model
from indexer import Indexer, IndexerConfig, StoreConfig
from indexer.store_redis import RedisStore
from tests.test_indexer_index import make_fixture_repo
from tests.test_store_disk import _key, _kv

torch.set_num_threads(1)
redis = pytest.importorskip("redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.time() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


def test_redis_round_trip_and_corruption(redis_url):
    store = RedisStore.from_url(redis_url, prefix="t1:", shape=(3, 2, 16))
    kv = _kv(40)
    key = _key(kv)
    assert store.get(key) is None and not store.contains(key)
    store.put(key, kv)
    assert store.contains(key)
    raw = store.client.get("t1:" + key.to_str())
    assert key.fingerprint in ("t1:" + key.to_str())  # keys include the model fingerprint
    out = store.get(key)
    assert torch.equal(out.k, kv.k.half()) and torch.equal(out.v, kv.v.half())
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 1
    store.client.set("t1:" + key.to_str(), bytes(bad))
    assert store.get(key) is None and not store.contains(key) and store.dropped == 1
    store.client.set("t1:" + key.to_str(), raw[: len(raw) // 3])
    assert store.get(key) is None and store.dropped == 2


def test_unreachable_server_is_a_miss():
    store = RedisStore.from_url(f"redis://127.0.0.1:{_free_port()}/0")
    kv = _kv(4)
    store.put(_key(kv), kv)
    assert store.get(_key(kv)) is None and not store.contains(_key(kv))
    assert len(store) == 0 and store  # holds nothing it can serve; still a store


def test_a_read_sets_the_ttl_again_in_one_round_trip(redis_url, monkeypatch):
    """Entries expired `ttl_s` after they were written however often they were read: a chunk the team read every
    day was recomputed every week."""
    store = RedisStore.from_url(redis_url, prefix="ttl:", ttl_s=3600, shape=(3, 2, 16))
    kv, absent = _kv(8), _key(_kv(8, seed=1))
    key, name = _key(kv), "ttl:" + _key(kv).to_str()
    store.put(key, kv)
    assert 3590 <= store.client.ttl(name) <= 3600
    store.client.expire(name, 5)  # written long ago: 5 s left
    sends, conn = [], redis.connection.AbstractConnection
    send = conn.send_packed_command
    monkeypatch.setattr(conn, "send_packed_command", lambda c, *a, **k: sends.append(1) or send(c, *a, **k))
    assert torch.equal(store.get(key).k, kv.k.half())
    assert len(sends) == 1  # GET and EXPIRE in one write: one round trip, as a plain GET
    monkeypatch.undo()
    assert 3590 <= store.client.ttl(name) <= 3600  # the full TTL again
    assert store.get(absent) is None and store.client.exists("ttl:" + absent.to_str()) == 0  # a miss makes nothing
    forever = RedisStore.from_url(redis_url, prefix="ttl:", ttl_s=0, shape=(3, 2, 16))
    store.client.persist(name)
    assert torch.equal(forever.get(key).v, kv.v.half()) and store.client.ttl(name) == -1  # ttl_s=0 adds none
    store.client.rpush("ttl:" + absent.to_str(), b"x")
    assert store.get(absent) is None and store.dropped == 1  # WRONGTYPE still reads as a foreign key, not an outage
    assert store.client.exists("ttl:" + absent.to_str()) == 0 and store.skipped == 0
    store.close()
    forever.close()


def test_len_counts_the_keys_under_its_prefix_only(redis_url):
    """The prefix is matched literally: as a pattern, "n?[xy]*:" would match the other store's keys, not its own."""
    a = RedisStore.from_url(redis_url, prefix="n?[xy]*:")
    b = RedisStore.from_url(redis_url, prefix="nnx:")
    kvs = [_kv(4, seed=i) for i in range(3)]
    a.put(_key(kvs[0]), kvs[0])
    for kv in kvs[1:]:
        b.put(_key(kv), kv)
    assert len(a) == 1 and len(b) == 2
    a.delete(_key(kvs[0]))
    assert len(a) == 0 and len(b) == 2
    a.close()
    b.close()


def test_two_workspaces_share_chunks_through_redis(redis_url, hf_checkpoints, tmp_path):
    lm = load_model(hf_checkpoints["llama-gqa"], device="cpu")
    make_fixture_repo(tmp_path / "alice")
    make_fixture_repo(tmp_path / "bob")  # the same repository checked out elsewhere (own disk cache)
    store = StoreConfig(tiers=("memory", "disk", "redis"), redis_url=redis_url, redis_prefix="share:")

    def cfg(root):
        return IndexerConfig(root, max_chunk_tokens=256, min_chunk_tokens=24, n_commits=0, store=store)

    first = Indexer(cfg(tmp_path / "alice"), lm).index()
    assert first.computed == first.chunks > 0
    bob = Indexer(cfg(tmp_path / "bob"), lm)
    second = bob.index()
    assert second.computed == 0 and second.reused == second.chunks  # every chunk came from the team's redis
    chunk = bob.chunks()[0]
    kv = bob.get_kv(chunk)
    assert bob.store.hits["redis"] >= 1 and kv.k.dtype == lm.model.dtype and bob.computed == 0
