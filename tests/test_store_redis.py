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
