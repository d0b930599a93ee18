"""CapsuleStore (budgets, spill, reload, searches, damaged files) and SessionTree (undo, redo, fork)."""

import logging
import os
import time

import pytest
import torch

from blend.kv_cache import KVCache
from capsule import CapsuleConfig, CapsuleError, CapsuleStore, SessionTree, restore, serde, snapshot, text_hash
from capsule import store as capsule_store
from capsule.capsule import Capsule

FP = "f" * 32
# Tiny synthetic capsules: 2 layers, 1 kv head, head_dim 4 -> 64 B of KV per token.
L, H, D = 2, 1, 4


def make(tokens, uri="file:///a.py", text="", fp=FP, version=None, spare=0) -> Capsule:
    g = torch.Generator().manual_seed(sum(tokens) + len(tokens))
    n = len(tokens)
    k, v = torch.randn(L, H, n, D, generator=g), torch.randn(L, H, n, D, generator=g)
    cache = KVCache.from_tensors(k, v, torch.arange(n))
    return snapshot(cache, tokens, torch.randn(16, generator=g), fp, uri=uri, doc_version=version,
                    text_hash=text_hash(text), spare_tokens=spare)  # fmt: skip


def _same(a: Capsule, b: Capsule) -> bool:
    return a.id == b.id and a.tokens == b.tokens and torch.equal(a.kv.k, b.kv.k) and torch.equal(a.kv.v, b.kv.v)


def test_memory_only_lru_drops_the_oldest():
    caps = [make(list(range(i, i + 10))) for i in range(4)]
    store = CapsuleStore(CapsuleConfig(memory_bytes=3 * caps[0].bytes, disk_dir=None))
    for c in caps[:3]:
        store.put(c)
    assert store.get(caps[0].id) is caps[0]  # touch: caps[1] is now the least recently used
    store.put(caps[3])
    assert caps[1].id not in store and store.get(caps[1].id) is None
    assert all(store.get(c.id) is c for c in (caps[0], caps[2], caps[3]))
    assert store.stats()["memory_bytes"] == 3 * caps[0].bytes


def test_spill_to_disk_and_reload(tmp_path):
    caps = [make(list(range(i, i + 50))) for i in range(5)]
    # Room for two, also when one of them came back from disk with an 8-token spare tail (+576 B).
    store = CapsuleStore(CapsuleConfig(memory_bytes=2 * caps[0].bytes + 1000, disk_dir=tmp_path, spare_tokens=8))
    for c in caps:
        store.put(c)
    st = store.stats()
    assert st["capsules"] == 5 and st["in_memory"] == 2 and st["on_disk"] == 3
    assert {i["where"] for i in store.list()} == {"memory", "disk"}
    back = store.get(caps[0].id)  # reloaded from its file, verified, with a fresh spare tail
    assert back is not caps[0] and _same(back, caps[0]) and back.kv.spare == 8
    assert store.stats()["in_memory"] == 2  # reloading spilled another one
    # A new store over the same directory finds the spilled capsules by their headers.
    again = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))
    assert {i["id"] for i in again.list()} == {p.stem for p in tmp_path.glob("*.capsule")}
    assert len(again) == 4  # three spilled by put, one more when caps[0] came back
    assert _same(again.get(caps[1].id), caps[1])


def test_disk_budget_deletes_least_recently_used_files(tmp_path):
    caps = [make(list(range(i, i + 100))) for i in range(4)]
    one_file = serde.write(caps[0], tmp_path / "size.probe")  # not a *.capsule: the store ignores it
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path, disk_bytes=int(2.5 * one_file)))
    for c in caps:
        store.put(c)
    assert len(list(tmp_path.glob("*.capsule"))) == 2 and len(store) == 2
    assert store.get(caps[0].id) is None and _same(store.get(caps[3].id), caps[3])


def _written_long_ago(tmp_path, caps) -> list:
    """Spill `caps` to `tmp_path` with file mtimes long past, in this order; the files' paths."""
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))
    paths = []
    for i, c in enumerate(caps):
        store.put(c)
        paths.append(tmp_path / f"{c.id}.capsule")
        os.utime(paths[-1], (1000 + i, 1000 + i))
    return paths


def _restarted(tmp_path, n_files: int, one_file: int) -> CapsuleStore:
    return CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path, disk_bytes=n_files * one_file + one_file // 2))


def test_disk_lru_by_last_use_survives_a_restart(tmp_path):
    """A store starting on the directory ordered its files by write time: the capsule in use, written long ago,
    was the first deleted (a read did not move its file's mtime)."""
    caps = [make(list(range(i, i + 100))) for i in range(3)]
    paths = _written_long_ago(tmp_path, caps)
    one_file = paths[0].stat().st_size
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))  # a restart: order by mtime
    assert _same(store.get(caps[0].id), caps[0])  # reloaded from its file: used now
    again = _restarted(tmp_path, 2, one_file)  # the next restart, with room for two files
    assert caps[0].id in again and caps[1].id not in again and caps[2].id in again
    assert paths[0].exists() and not paths[1].exists() and _same(again.get(caps[0].id), caps[0])
    assert paths[0].stat().st_mtime > time.time() - 60


def test_capsule_used_from_memory_moves_its_file(tmp_path, monkeypatch):
    """A capsule reloaded once and then used from memory all day kept the mtime of its first write."""
    caps = [make(list(range(i, i + 100))) for i in range(3)]
    paths = _written_long_ago(tmp_path, caps)
    one_file = paths[0].stat().st_size
    store = CapsuleStore(CapsuleConfig(disk_dir=tmp_path))  # room in memory: a reloaded capsule stays there
    assert store.get(caps[0].id) is not None and store.stats()["in_memory"] == 1
    os.utime(paths[0], (1000, 1000))
    monkeypatch.setattr(capsule_store, "_TOUCH_S", 0.0, raising=False)  # as if 10 minutes had passed since that reload
    assert store.get(caps[0].id) is not None and store.stats()["in_memory"] == 1  # served from memory...
    assert paths[0].stat().st_mtime > time.time() - 60  # ...and its file moved
    again = _restarted(tmp_path, 2, one_file)
    assert caps[0].id in again and caps[1].id not in again and caps[2].id in again


def test_use_of_a_recent_file_writes_no_metadata(tmp_path):
    """The mtime moves only when older than 10 minutes: a capsule in constant use costs no write per use."""
    caps = [make(list(range(i, i + 20))) for i in range(2)]
    paths = _written_long_ago(tmp_path, caps)
    recent = int(time.time()) - 60
    for p in paths:
        os.utime(p, (recent, recent))
    store = CapsuleStore(CapsuleConfig(disk_dir=tmp_path))
    for c in caps + caps:  # a reload from disk, then a use in memory
        assert _same(store.get(c.id), c)
    store.put(caps[0])
    assert store.stats()["in_memory"] == 2 and all(store.spill(c.id) for c in caps)
    assert store.get(caps[1].id) is not None
    assert [p.stat().st_mtime for p in paths] == [recent, recent]


def test_longest_prefix_and_preference():
    store = CapsuleStore(CapsuleConfig())
    a = make([1, 2, 3, 4, 5], uri="file:///a.py")
    b = make([1, 2, 3, 9], uri="file:///b.py")
    c = make([1, 2, 3, 4, 5, 6, 7], uri="file:///b.py")
    d = make([1, 2, 3, 4, 5, 8], uri="file:///a.py", fp="e" * 32)
    for x in (a, b, c, d):
        store.put(x)
    assert store.longest_prefix("file:///a.py", [1, 2, 3, 4, 5, 6, 0]) == (c, 6)  # any uri, longest wins
    hit, n = store.longest_prefix("file:///a.py", [1, 2, 3, 4, 7], FP)
    assert n == 4 and hit is a  # a and c tie at 4: this uri wins
    hit, n = store.longest_prefix("file:///b.py", [1, 2, 3, 4, 7], FP)
    assert n == 4 and hit is c
    assert store.longest_prefix(None, [1, 2, 3, 4, 5, 8, 1], "e" * 32) == (d, 6)  # only that model's capsules
    assert store.longest_prefix(None, [7, 7], FP) is None


def test_by_text_hash_finds_the_newest_state_of_the_document(tmp_path):
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))  # everything spilled: loads it
    old = make([1, 2], text="x = 1", version=1)
    old.created -= 10
    new = make([1, 2, 3], text="x = 1", version=3)
    other = make([1, 5], text="x = 2", version=2)
    for c in (old, other, new):
        store.put(c)
    hit = store.by_text_hash("file:///a.py", text_hash("x = 1"))
    assert hit.id == new.id and hit.doc_version == 3
    assert store.by_text_hash("file:///b.py", text_hash("x = 1")) is None
    assert store.by_text_hash("file:///a.py", text_hash("x = 1"), fingerprint="0" * 32) is None


def test_get_refuses_another_fingerprint():
    store = CapsuleStore()
    c = make([1, 2, 3])
    store.put(c)
    with pytest.raises(CapsuleError, match=f"{FP}.*{'0' * 32}.*refused"):
        store.get(c.id, fingerprint="0" * 32)
    assert store.get(c.id, fingerprint=FP) is c
    with pytest.raises(CapsuleError, match="refused"):
        restore(c, "0" * 32)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_is_dropped_never_served(tmp_path, caplog, damage):
    c = make(list(range(40)))
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))
    store.put(c)
    path = tmp_path / f"{c.id}.capsule"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x04
    else:
        data = data[:-64]
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="capsule.store"):
        assert store.get(c.id) is None
    assert "damaged capsule file" in caplog.text and not path.exists() and c.id not in store
    assert store.longest_prefix(None, list(range(40))) is None and store.stats()["dropped_corrupt"] == 1


def test_unreadable_file_is_dropped_at_startup(tmp_path, caplog):
    (tmp_path / "junk.capsule").write_bytes(b"not a capsule at all, not even close")
    with caplog.at_level(logging.WARNING, logger="capsule.store"):
        store = CapsuleStore(CapsuleConfig(disk_dir=tmp_path))
    assert len(store) == 0 and "not a capsule file" in caplog.text and not (tmp_path / "junk.capsule").exists()


def test_drop_and_prune(tmp_path):
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))
    caps = [make([i, i + 1], uri="file:///a.py") for i in range(5)] + [make([9, 9], uri="file:///b.py")]
    for i, c in enumerate(caps):
        c.created = 1000.0 + i
        store.put(c)
    assert store.drop(caps[0].id) and not store.drop(caps[0].id)
    assert store.prune(uri="file:///a.py", keep_last=2) == 2
    assert [i["id"] for i in store.list("file:///a.py")] == [caps[3].id, caps[4].id]
    assert store.prune(older_than_s=0.0) == 3 and len(store) == 0 and not list(tmp_path.glob("*.capsule"))


def test_restore_of_a_reloaded_capsule_never_changes_its_file(tmp_path):
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path, spare_tokens=4))
    c = make(list(range(20)))
    store.put(c)
    before = (tmp_path / f"{c.id}.capsule").read_bytes()
    state = restore(store.get(c.id), FP)
    cache = state.cache
    cache.set_positions(cache.reserve(3), torch.arange(20, 23))
    cache.layer(0)[0][:, 20:23] = 7.0  # what the model does on an append: into the spare tail
    store.spill(c.id)
    assert (tmp_path / f"{c.id}.capsule").read_bytes() == before
    assert _same(store.get(c.id), c)


def test_tree_undo_redo_fork():
    t = SessionTree("file:///a.py")
    a, b, c = make([1]), make([1, 2]), make([1, 2, 3])
    assert t.undo() is None and t.redo() is None
    t.commit(a)
    t.commit(b)
    t.commit(c)
    assert t.path() == [a.id, b.id, c.id]
    assert t.undo() == b.id and t.undo() == a.id and t.undo() is None and t.current == a.id
    assert t.redo() == b.id
    d = make([1, 2, 4])
    t.commit(d)  # an edit after undo: a new branch of b
    assert t.children(b.id) == [c.id, d.id]
    assert t.undo() == b.id and t.redo() == d.id  # redo follows the child last undone from
    assert t.undo() == b.id
    forks = t.fork(2)
    assert len(set(forks)) == 2 and all(t.branches()[f] == b.id for f in forks)
    assert t.switch(forks[0]) == b.id
    e = make([1, 2, 5], text="e")
    t.commit(e)
    assert t.current == e.id and t.branches()["main"] == b.id and t.branches()[forks[1]] == b.id
    assert t.find_text_hash(e.text_hash) == e.id
    t.remove(b.id)  # pruned: its children hang from a, cursors on it move up
    assert t.nodes[e.id].parent == a.id and set(t.children(a.id)) == {c.id, d.id, e.id}
    assert t.branches()["main"] == a.id and t.path(e.id) == [a.id, e.id]
    with pytest.raises(ValueError, match="unknown branch"):
        t.switch("nope")
