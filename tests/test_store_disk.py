"""The disk tier and the entry format: round trips, damage of every kind is detected, atomic writes, budgets."""

import os

import pytest
import torch

from blend.cacheblend import ChunkKV
from blend.checksum import word_sum
from indexer import serde
from indexer.keys import ChunkKey, chunk_key
from indexer.store_disk import DiskStore

torch.set_num_threads(1)

SHAPE = (3, 2, 16)  # n_layers, n_kv_heads, head_dim


def _kv(n, seed=0, vocab=320, dtype=torch.float32, positions=None, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    L, H, D = shape
    k = torch.randn(L, H, n, D, generator=g).to(dtype)
    v = torch.randn(L, H, n, D, generator=g).to(dtype)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    return ChunkKV(tokens, k, v, torch.arange(n) if positions is None else positions)


def _key(kv, fp="ab" * 16):
    return chunk_key(fp, kv.tokens.tolist())


@pytest.mark.parametrize("n", [1, 7, 64, 333])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_entry_round_trip_is_fp16_exact(n, dtype):
    kv = _kv(n, seed=n, dtype=dtype)
    data = serde.encode(_key(kv), kv)
    out = serde.decode(bytes(data), _key(kv), SHAPE)
    assert out.k.dtype == torch.float16 and out.k.shape == (3, 2, n, 16)
    assert torch.equal(out.k, kv.k.half()) and torch.equal(out.v, kv.v.half())
    assert torch.equal(out.tokens, kv.tokens) and torch.equal(out.positions, kv.positions)


def test_positions_tokens_and_empty_entries():
    kv = _kv(5, positions=torch.tensor([3, 9, 10, 11, 40]), vocab=200_000)  # int32 ids, scattered positions
    out = serde.decode(serde.encode(_key(kv), kv), _key(kv))
    assert torch.equal(out.tokens, kv.tokens) and out.positions.tolist() == [3, 9, 10, 11, 40]
    shifted = _kv(4, positions=torch.arange(10, 14))
    assert serde.decode(serde.encode(_key(shifted), shifted)).positions.tolist() == [10, 11, 12, 13]
    empty = _kv(0)
    out = serde.decode(serde.encode(_key(empty), empty))
    assert len(out) == 0 and out.k.shape == out.v.shape == (3, 2, 0, 16)


def test_an_unknown_token_type_is_corrupt_even_with_a_valid_checksum(monkeypatch):
    pack = serde.msgpack.packb
    monkeypatch.setattr(serde.msgpack, "packb", lambda head: pack({**head, "tok": "u8"}))
    kv = _kv(6)
    data = serde.encode(_key(kv), kv)  # the checksum covers the altered header
    with pytest.raises(serde.CorruptEntry, match="unknown token id type 'u8'"):
        serde.decode(data, _key(kv), SHAPE)


def test_fp16_overflow_is_refused_not_stored_as_inf():
    kv = _kv(4)
    kv.k[0, 0, 0, 0] = 1e6
    with pytest.raises(ValueError, match="not finite in fp16"):
        serde.encode(_key(kv), kv)


def test_bytes_per_token_is_kv_plus_a_small_header():
    for n in (128, 512):
        kv = _kv(n)
        size = len(serde.encode(_key(kv), kv))
        kv_bytes = 2 * 3 * 2 * 16 * 2 * n  # 2 x layers x kv_heads x head_dim x 2 bytes per token
        assert kv_bytes == serde.entry_nbytes(n, *SHAPE)
        assert 1.0 < size / kv_bytes < 1.01, size / kv_bytes  # ids (2 B/token) + ~120 B of header


def test_every_truncation_and_bit_flip_is_detected():
    kv = _kv(40)
    key = _key(kv)
    data = bytes(serde.encode(key, kv))
    for cut in list(range(0, 200, 7)) + list(range(200, len(data), 997)) + [len(data) - 1]:
        with pytest.raises(serde.CorruptEntry):
            serde.decode(data[:cut], key)
    g = torch.Generator().manual_seed(1)
    offsets = list(range(0, 64)) + torch.randint(64, len(data), (200,), generator=g).tolist()
    for off in offsets:
        for bit in (0, 5):
            bad = bytearray(data)
            bad[off] ^= 1 << bit
            with pytest.raises(serde.CorruptEntry):
                serde.decode(bad, key)
    with pytest.raises(serde.CorruptEntry, match="is for"):
        serde.decode(data, ChunkKey("cd" * 16, key.token_hash))
    with pytest.raises(serde.CorruptEntry, match="shape"):
        serde.decode(data, key, (3, 2, 32))


@pytest.mark.parametrize("shape,n,vocab", [((1, 1, 3), 5, 320), ((2, 1, 6), 7, 100_000), ((3, 2, 16), 1, 320)])
def test_odd_sizes_round_trip_and_are_checked(shape, n, vocab):
    # k/v of an odd byte size (joined, padded piece), int32 token ids, a single token
    kv = _kv(n, vocab=vocab, shape=shape)
    key = _key(kv)
    data = bytes(serde.encode(key, kv))
    assert len(data) % 8 == 0
    back = serde.decode(data, key, shape)
    assert torch.equal(back.tokens, kv.tokens) and torch.equal(back.positions, kv.positions)
    assert torch.equal(back.k, kv.k.half()) and torch.equal(back.v, kv.v.half())
    for off in range(16, len(data), 3):
        bad = bytearray(data)
        bad[off] ^= 1
        with pytest.raises(serde.CorruptEntry):
            serde.decode(bad, key, shape)


def test_put_recreates_a_directory_removed_under_it(tmp_path):
    import shutil

    store = DiskStore(tmp_path, 1 << 30, shape=SHAPE)
    a, b = _kv(30, seed=1), _kv(30, seed=1, positions=torch.arange(5, 35))
    store.put(_key(a), a)
    shutil.rmtree(tmp_path / _key(a).relpath().split("/")[0])  # the fan-out directory, as `rm -rf` would
    b_key = ChunkKey(_key(a).fingerprint, _key(a).token_hash)  # same directory
    store.delete(b_key)
    store.put(b_key, b)
    got = store.get(b_key)
    assert got is not None and torch.equal(got.positions, b.positions)


def test_a_cache_directory_removed_whole_is_made_again(tmp_path):
    """A cleanup (`rm -rf` of the cache directory) under a running store: the next put makes it again (its
    parent still exists; a store only refuses to bring back a directory above its own)."""
    import shutil

    (tmp_path / "cache").mkdir()  # left by an earlier run, as usual
    store = DiskStore(tmp_path / "cache", 1 << 30, shape=SHAPE)
    a = _kv(30, seed=1)
    store.put(_key(a), a)
    shutil.rmtree(tmp_path / "cache")
    store.delete(_key(a))
    store.put(_key(a), a)
    assert store.write_error is None and store.get(_key(a)) is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_check_is_the_unsigned_wrapping_sum(threads):
    # words near 2**64 so the sum overflows many times; enough of them that torch splits the reduction
    import numpy as np

    rng = np.random.default_rng(0)
    words = rng.integers(2**63, 2**64 - 1, size=300_001, dtype=np.uint64, endpoint=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert word_sum(words) == int(words.sum(dtype=np.uint64)) == sum(words.tolist()) % 2**64
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("use_mmap", [True, False])
def test_disk_store_round_trip_and_damage(tmp_path, use_mmap):
    store = DiskStore(tmp_path, 1 << 30, shape=SHAPE, use_mmap=use_mmap, mmap_min_bytes=0)
    kvs = [_kv(50 + i, seed=i) for i in range(3)]
    for kv in kvs:
        store.put(_key(kv), kv)
    assert len(store) == 3 and store.nbytes() == sum(f.stat().st_size for f in tmp_path.rglob("*.kv"))
    for kv in kvs:
        out = store.get(_key(kv))
        assert torch.equal(out.k, kv.k.half()) and torch.equal(out.v, kv.v.half())
    path = tmp_path / _key(kvs[0]).relpath()
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # truncated
    assert not store.contains(_key(kvs[0])) and not path.exists()
    path2 = tmp_path / _key(kvs[1]).relpath()
    flipped = bytearray(path2.read_bytes())
    flipped[len(flipped) // 2] ^= 4
    path2.write_bytes(bytes(flipped))
    assert store.contains(_key(kvs[1]))  # the cheap check sees a whole file ...
    assert store.get(_key(kvs[1])) is None and not path2.exists()  # ... the load sees the flip
    assert store.dropped == 2 and len(store) == 1
    assert store.get(_key(_kv(3, seed=99))) is None  # plain miss


def test_a_write_killed_midway_leaves_no_entry(tmp_path, monkeypatch):
    store = DiskStore(tmp_path, 1 << 30)
    kv = _kv(20)

    def die(*a, **k):
        raise KeyboardInterrupt  # the process dies between write and rename

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        store.put(_key(kv), kv)
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.kv")) and not list(tmp_path.rglob("*.tmp"))
    assert store.get(_key(kv)) is None
    store.put(_key(kv), kv)
    assert store.get(_key(kv)) is not None


def test_byte_budget_evicts_least_recently_used(tmp_path):
    kvs = [_kv(64, seed=i) for i in range(4)]
    size = len(serde.encode(_key(kvs[0]), kvs[0]))
    store = DiskStore(tmp_path, 3 * size)
    for kv in kvs[:3]:
        store.put(_key(kv), kv)
    store.get(_key(kvs[0]))  # now the most recent
    store.put(_key(kvs[3]), kvs[3])
    assert store.nbytes() <= 3 * size and len(store) == 3
    assert store.get(_key(kvs[1])) is None and store.get(_key(kvs[0])) is not None
    reopened = DiskStore(tmp_path, 3 * size)  # the index of sizes is rebuilt from the directory
    assert len(reopened) == 3 and reopened.nbytes() == store.nbytes()


def test_mmap_entries_are_views_of_the_file(tmp_path):
    store = DiskStore(tmp_path, 1 << 30, mmap_min_bytes=0)
    kv = _kv(30)
    store.put(_key(kv), kv)
    out = store.get(_key(kv))
    # zero copy: v sits right after k in the one mapped buffer
    assert out.v.data_ptr() == out.k.data_ptr() + out.k.numel() * 2


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_a_refused_read_ahead_hint_does_not_lose_the_entry(tmp_path, monkeypatch):
    store = DiskStore(tmp_path, 1 << 30, shape=SHAPE, mmap_min_bytes=0)
    kv = _kv(40)
    store.put(_key(kv), kv)
    calls = []

    def refuse(fd, offset, length, advice):
        calls.append(advice)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    out = store.get(_key(kv))
    assert out is not None and torch.equal(out.k, kv.k.half())
    assert calls == [os.POSIX_FADV_WILLNEED]  # the hint was asked for, and its refusal ignored


def test_short_writes_go_on_where_they_stopped(tmp_path, monkeypatch):
    """writev and write may write less than asked (a signal, a filesystem limit): the entry is still whole."""
    import indexer.store_disk as store_disk

    store = DiskStore(tmp_path, 1 << 30)
    kv = _kv(200)
    real_writev, real_write = os.writev, os.write
    monkeypatch.setattr(store_disk.os, "writev", lambda fd, bufs: real_writev(fd, [bytes(bufs[0])[:37]]))
    monkeypatch.setattr(store_disk.os, "write", lambda fd, buf: real_write(fd, bytes(buf)[:1000]))
    store.put(_key(kv), kv)
    monkeypatch.undo()
    got = store.get(_key(kv))
    assert got is not None and torch.equal(got.k, kv.k.half()) and torch.equal(got.v, kv.v.half())


def test_a_temporary_name_in_use_is_not_written_over(tmp_path, monkeypatch):
    """Temporary files are made exclusively: another writer's file of the same name is left alone."""
    import indexer.store_disk as store_disk

    store = DiskStore(tmp_path, 1 << 30)
    kv = _kv(20)
    path = tmp_path / _key(kv).relpath()
    path.parent.mkdir(parents=True)
    names = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(store_disk.os, "urandom", lambda n: next(names))
    other = path.parent / f".{_key(kv).token_hash}.{'00' * 6}.tmp"
    other.write_bytes(b"another writer")
    store.put(_key(kv), kv)
    assert other.read_bytes() == b"another writer"
    assert store.get(_key(kv)) is not None
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
