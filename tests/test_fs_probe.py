"""A hostile file system under the indexer, its disk tier, the watcher, `kvblend index` and the server: a cache
directory that cannot be made or written, a disk that fills up mid-write, a workspace deleted under a running
server, directories that can be listed but not searched, a file written without pause. Each gets one message,
loses nothing it can keep, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from blend.loader import load_model
from indexer import Indexer, IndexerConfig
from indexer.indexer import UpdateResult
from indexer.watcher import Watcher
from kvblend.cli import main
from tests.test_lsp_probe import InProcess
from tests.test_store_disk import _key, _kv

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm(hf_checkpoints):
    return load_model(hf_checkpoints["llama-gqa"], device="cpu")


@pytest.fixture()
def ws(tmp_path):
    root = tmp_path / "ws"
    for i in range(3):
        (root / "pkg").mkdir(parents=True, exist_ok=True)
        body = "".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n\n" for j in range(8))
        (root / f"pkg/m{i}.py").write_text(body)
    return root


def _cfg(root: Path, **kw) -> IndexerConfig:
    return IndexerConfig(root, max_chunk_tokens=64, min_chunk_tokens=16, workers=1, **kw)


def _full_disk(monkeypatch) -> None:
    """Every write of an entry fails with ENOSPC after its temporary file was made (as a full disk does)."""

    def writev(fd, buffers) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "writev", writev)


def _disk_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "indexer.store_disk" and r.levelno >= logging.WARNING]


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def test_a_full_disk_is_said_once_and_the_index_kept_in_memory(ws, lm, monkeypatch, caplog):
    """A full disk failed every chunk's write with its own warning (150 for a small repository), and the chunks of
    a background index, which skip the memory tier, were kept nowhere: every one was computed again on use."""
    _full_disk(monkeypatch)
    idx = Indexer(_cfg(ws), lm)
    with caplog.at_level(logging.WARNING):
        stats = idx.index()
    chunks = [c for c in idx.chunks()]
    disk = idx.store.tier("disk")
    assert stats.computed == len({c.key for c in chunks}) > 10
    assert len(_disk_warnings(caplog)) == 1 and "No space left on device" in _disk_warnings(caplog)[0]
    assert disk.failed_writes >= stats.computed and len(disk) == 0
    assert all(idx.store.tier("memory").contains(c.key) for c in chunks)  # kept where it could be
    assert _leftovers(ws) == []
    monkeypatch.undo()  # space again: the next write lands, and says so once
    caplog.clear()
    idx.store.put(chunks[0].key, idx.store.get(chunks[0].key))
    assert disk.write_error is None and disk.contains(chunks[0].key) and len(_disk_warnings(caplog)) == 1
    idx.close()


def test_a_file_where_the_cache_directory_should_be(ws, lm, caplog):
    """`.kvblend` a file: the indexer would not start (NotADirectoryError); now it indexes into memory, with one
    warning, and its reads and checks miss quietly (each check logged a "truncated entry" and tried to delete)."""
    (ws / ".kvblend").write_text("not a directory\n")
    with caplog.at_level(logging.WARNING):
        idx = Indexer(_cfg(ws), lm)
        stats = idx.index()
        chunk = idx.chunks()[0]
        assert idx.store.tier("disk").get(chunk.key) is None
        assert idx.get_kv(chunk) is not None
    assert stats.files == 4 and stats.computed > 10  # the three modules and the stray file itself
    assert all(idx.store.contains(c.key) for c in idx.chunks())
    assert len(_disk_warnings(caplog)) == 1 and "Not a directory" in _disk_warnings(caplog)[0]
    idx.close()


def test_a_deleted_workspace_is_not_made_again(ws, lm, tmp_path):
    """A chunk computed after the workspace was deleted (or renamed) made `<workspace>/.kvblend/cache/...` again:
    a ghost directory in the old place (and `git clone` into it refused). The cache alone deleted is made again."""
    idx = Indexer(_cfg(ws, precompute=False), lm)
    idx.index()
    kv = _kv(10, seed=3, dtype=torch.float16, shape=idx.shape)
    shutil.rmtree(ws / ".kvblend")
    idx.store.put(_key(kv), kv)
    assert idx.store.tier("disk").contains(_key(kv))  # `rm -rf .kvblend` to clear the cache: made again
    os.rename(ws, tmp_path / "renamed")
    kv2 = _kv(11, seed=4, dtype=torch.float16, shape=idx.shape)
    idx.store.put(_key(kv2), kv2)
    assert not ws.exists() and idx.store.get(_key(kv2)) is not None  # served from memory
    idx.close()


def test_a_stream_of_events_does_not_put_off_the_update(tmp_path):
    """A file written more often than the debounce (a build log in the workspace) put off every update for as
    long as it was written: the timer was restarted by every event."""
    updates = []
    fake = types.SimpleNamespace(
        cfg=types.SimpleNamespace(root=tmp_path, debounce_s=0.2),
        update=lambda paths: updates.append(list(paths)) or UpdateResult(),
        refresh_commits=lambda: None,
    )
    w = Watcher(fake)
    w.max_delay_s = 0.6
    threads = threading.active_count()
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            w._schedule(path=str(tmp_path / "build.log"))
            assert threading.active_count() <= threads + 2  # one timer at a time, not one thread per event
            time.sleep(0.05)
        assert len(updates) >= 2 and updates[0] == [str(tmp_path / "build.log")]
    finally:
        w.stop()


def _unsearchable(monkeypatch, directory: Path) -> None:
    """`directory` listed but not searched (mode r--, as a user other than root sees it): stat of a path in it
    fails with EACCES (root bypasses permissions, so the tests simulate it)."""
    inside = str(directory) + os.sep
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def denied(path, *args, _real=real, **kw):
            if os.fspath(path).startswith(inside):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return _real(path, *args, **kw)

        monkeypatch.setattr(os, name, denied)


def test_a_directory_that_cannot_be_searched_skips_its_files_not_the_index(ws, lm, monkeypatch):
    """The `.gitignore` check of a file in such a directory raised PermissionError out of the walk: `kvblend
    index` indexed nothing, and an update lost the other paths of its batch (and logged a traceback)."""
    (ws / "locked").mkdir()
    (ws / "locked/secretive.py").write_text("def hidden():\n    return 1\n")
    _unsearchable(monkeypatch, ws / "locked")
    idx = Indexer(_cfg(ws, precompute=False), lm)
    stats = idx.index()
    assert stats.files == 3 and stats.skipped.get("unreadable") == 1
    (ws / "pkg/new.py").write_text("def brand_new(x):\n    return x * 2\n")
    result = idx.update([ws / "locked/secretive.py", ws / "pkg/new.py"])
    assert "pkg/new.py" in idx.files and result.skipped["unreadable"] == 1
    idx.close()


def test_an_unsearchable_kvblend_directory_does_not_stop_the_indexer(ws, lm, monkeypatch):
    """`.kvblend/ignore` and `.gitignore` files were looked up with Path.is_file, which raises PermissionError in
    a directory that cannot be searched (Python 3.11): the indexer could not even start."""
    (ws / ".kvblend").mkdir(exist_ok=True)
    _unsearchable(monkeypatch, ws / ".kvblend")
    (ws / "locked").mkdir()
    _unsearchable(monkeypatch, ws / "locked")
    idx = Indexer(_cfg(ws, precompute=False, cache_dir=ws.parent / "cache"), lm)
    assert idx.rules.is_ignored("locked/a.py") is False and idx.index().files >= 2
    idx.close()


def _index_cli(lm_dir, ws: Path, capsys) -> tuple[int, str, str]:
    rc = main(["index", str(ws), "--model", str(lm_dir), "--device", "cpu", "--workers", "1",
               "--max-chunk-tokens", "64", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    return rc, out, err


def test_kvblend_index_on_a_full_disk_says_so_once_and_fails(ws, hf_checkpoints, monkeypatch, capsys, caplog):
    """`kvblend index` on a full disk printed one warning per chunk and exited 0 with nothing kept."""
    _full_disk(monkeypatch)
    with caplog.at_level(logging.WARNING):
        rc, out, err = _index_cli(hf_checkpoints["llama-gqa"], ws, capsys)
    assert rc == 1 and '"files": 3' in out and "Traceback" not in err
    assert len(_disk_warnings(caplog)) == 1  # when it began (pytest takes the log from stderr)
    assert err.count("\n") == 1 and "chunks could not be written to the disk cache" in err
    assert "No space left on device" in err
    assert _leftovers(ws) == []


def test_kvblend_index_with_an_unusable_cache_directory_fails_before_the_work(ws, hf_checkpoints, capsys):
    (ws / ".kvblend").write_text("not a directory\n")
    rc, out, err = _index_cli(hf_checkpoints["llama-gqa"], ws, capsys)
    assert rc == 1 and out == "" and "Traceback" not in err
    assert "cannot write the disk cache" in err and "--cache-dir" in err.splitlines()[-1]


def test_the_server_indexes_in_memory_and_tells_the_user_once(ws, lm, tmp_path, monkeypatch):
    """The server showed "workspace not indexed" for a cache directory it cannot make, and nothing at all for a
    full disk (one log line per chunk)."""
    (ws / ".kvblend").write_text("not a directory\n")
    ls = InProcess(tmp_path)
    backend = ls.server.backend
    backend.root = ws
    backend._post = lambda fn, *args: fn(*args)
    idx = backend._make_indexer(lm)
    (ws / ".kvblend").unlink()
    _full_disk(monkeypatch)
    idx.index()
    shown = [m["params"]["message"] for m in ls.sent if m.get("method") == "window/showMessage"]
    assert len(shown) == 2 and "Not a directory" in shown[0] and "No space left on device" in shown[1]
    assert all("kept in memory" in m for m in shown)
    assert all(idx.store.contains(c.key) for c in idx.chunks())
    idx.close()


def test_a_read_failure_is_logged_once_per_outage(tmp_path, monkeypatch, caplog):
    """Unreadable entries are misses logged once per reason, not once per read; after reads work again the next
    failure is logged again (it was remembered for the life of the store)."""
    import indexer.store_disk as store_disk
    from indexer.store_disk import DiskStore

    store = DiskStore(tmp_path, 1 << 30)
    kv = _kv(16)
    store.put(_key(kv), kv)
    real_open = os.open

    def denied(path, *args, **kw):
        if os.fspath(path).endswith(".kv"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kw)

    def failing_reads(n: int) -> int:
        caplog.clear()
        with monkeypatch.context() as m:
            m.setattr(store_disk.os, "open", denied)
            assert all(store.get(_key(kv)) is None for _ in range(n))
        return sum("cannot read disk entry" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="indexer.store_disk"):
        assert failing_reads(3) == 1
        assert store.get(_key(kv)) is not None and store.contains(_key(kv))  # not deleted; reads work again
        assert failing_reads(2) == 1
