"""The disk tier: one file per chunk, written atomically, verified on load, read through a memory map.

Layout: <dir>/<fingerprint>/<1 hex>/<token hash>.kv in the format of `indexer.serde`. A write goes to a
temporary file in the same directory and is renamed over the final name, so a process killed mid-write
leaves a stray `*.tmp` (cleaned up later) and never a half-written entry; an entry damaged anyway
(truncated, bit-flipped: the checksum covers every byte after it) is deleted on load and reported as a miss.
Entries of 256 KiB or more are memory-mapped (k, v are views of the map); smaller ones are read, which is
faster at that size (measured: README).

A directory that cannot be made or written (read-only, a file in its place, a full disk) is not an error of the
caller: a failed write is logged once per outage (`write_error` says why until a write succeeds again) and the
entry is simply not kept here. Directories are made again only while `anchor` exists: a store must not bring
back a workspace deleted or renamed under a running server.
"""

from __future__ import annotations

import collections
import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from blend.cacheblend import ChunkKV
from indexer import serde
from indexer.keys import ChunkKey
from indexer.store import KVStore

log = logging.getLogger(__name__)

_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_STALE_TMP_S = 60.0  # a temporary file this old belongs to a writer that died
_TOUCH_S = 600.0  # a read entry's mtime is moved to now when older than this (the LRU order across restarts)


class DiskStore(KVStore):
    name = "disk"

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        shape: tuple[int, int, int] | None = None,
        use_mmap: bool = True,
        fsync: bool = False,
        mmap_min_bytes: int = 256 << 10,
    ) -> None:
        self.dir = Path(directory)
        self._root = str(self.dir)
        self.max_bytes = max_bytes
        self.shape = shape
        self.use_mmap = use_mmap
        self.mmap_min_bytes = mmap_min_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()  # relpath -> bytes, LRU first
        self._mtimes: dict[str, float] = {}  # relpath -> the file's mtime as last seen or set by this process
        self._bytes = 0
        self.dropped = 0  # corrupt entries deleted
        self._dirs: set[Path] = set()  # fan-out directories known to exist (one mkdir each, not one per put)
        self.write_error: str | None = None  # why writes fail now (None: they work); logged once per outage
        self.failed_writes = 0  # entries that could not be written
        self._read_error: str | None = None  # the last read failure logged
        self.on_write_error: Callable[[str], None] | None = None  # told once per outage (the server's message)
        # Missing directories are made only below this one, and only while it exists (the workspace, when the
        # indexer owns the store; else the nearest directory above the store's: a cache directory removed by a
        # cleanup is made again, its parent gone is not).
        self.anchor = next((p for p in self.dir.parents if os.path.isdir(p)), self.dir.parent)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only workspace, a file in the directory's place: served from other tiers
            self._write_failed(e)
        self._scan()

    def _scan(self) -> None:
        found, now = [], time.time()
        for dirpath, _, names in os.walk(self.dir):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if name.endswith(".kv"):
                    found.append((st.st_mtime, os.path.relpath(path, self.dir), st.st_size))
                elif name.endswith(".tmp") and now - st.st_mtime > _STALE_TMP_S:
                    _unlink(path)
        for mtime, rel, size in sorted(found):
            self._sizes[rel] = size
            self._mtimes[rel] = mtime
            self._bytes += size
        self._evict()

    def _path(self, key: ChunkKey) -> Path:
        return self.dir / key.relpath()

    def get(self, key: ChunkKey) -> ChunkKV | None:
        rel = key.relpath()
        try:
            fd = os.open(os.path.join(self._root, rel), os.O_RDONLY)
            try:
                st = os.fstat(fd)
                size = st.st_size
                kv = serde.decode(self._read(fd, size), key, self.shape)
                self._used(fd, rel, size, st.st_mtime)
            finally:
                os.close(fd)
        except _Changed:
            return None
        except (FileNotFoundError, NotADirectoryError):  # deleted by another process sharing the directory (or
            self._forget(rel)  # a file put where it was): stop counting its bytes
            return None
        except serde.CorruptEntry as e:
            log.warning("dropping corrupt disk entry %s: %s", key.to_str(), e)
            self.dropped += 1
            self.delete(key)
            return None
        except OSError as e:  # once per reason: an unreadable directory fails every read of every request
            if e.strerror != self._read_error:
                self._read_error = e.strerror
                log.warning("cannot read disk entry %s: %s (not repeated for other entries)", key.to_str(), e.strerror)
            return None
        self._read_error = None  # reads work again: the next failure is news
        return kv

    def _read(self, fd: int, size: int):
        """The entry's bytes: a private memory map (256 KiB or more) or a plain read."""
        if size == 0:
            raise serde.CorruptEntry("empty file")
        if self.use_mmap and size >= self.mmap_min_bytes:
            # Read ahead the whole file at once: the checksum pass faults every page in right away, and
            # faults alone read a cold file in small pieces (cold map + check: 0.96 -> 1.08x a plain read).
            _will_need(fd)
            return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)  # private pages: writable views
        buf = os.read(fd, size)  # below ~256 KiB mapping costs more than copying (page faults, setup)
        if len(buf) != size:  # the file changed under us (another writer's rename): not damage
            raise _Changed
        return buf

    def _used(self, fd: int, rel: str, size: int, mtime: float) -> None:
        """Mark a read entry most recently used (`_move`). An entry deleted or evicted while it was read (no link
        left: `delete` and `_evict` unlink under the lock) is served but not counted again: it would hold bytes of
        no file."""
        with self._lock:
            if os.fstat(fd).st_nlink == 0:
                return
            known = self._sizes.get(rel)
            if known != size:
                self._bytes += size - (known or 0)
                self._sizes[rel] = size
            stale = self._move(rel, mtime)
        if stale:
            try:
                os.utime(fd)
            except OSError:  # a directory shared read-only: the order is only lost across restarts
                pass

    def touch(self, key: ChunkKey) -> None:
        """The entry was just served by a tier above (memory): a use as a read here is (`_move`), or a chunk read
        from memory all day would be the first evicted after a restart."""
        rel = key.relpath()
        with self._lock:
            stale = rel in self._sizes and self._move(rel, self._mtimes.get(rel, 0.0))
        if stale:
            try:
                os.utime(self.dir / rel)
            except FileNotFoundError:
                self._forget(rel)
            except OSError:
                pass

    def _move(self, rel: str, mtime: float) -> bool:
        """Make `rel` (file mtime `mtime`) the most recently used entry, under the lock: last in this process's
        LRU, and by its mtime, which orders the LRU a later process rebuilds in `_scan` (without it a restart
        evicted the oldest *written* entry, however often it was used). True when the caller must set the
        file's mtime to now: only when older than _TOUCH_S, so that uses of a hot entry cost no metadata write
        (one per read measured 0.81 -> 0.78x a plain read)."""
        self._sizes.move_to_end(rel)
        now = time.time()
        stale = now - mtime >= _TOUCH_S
        self._mtimes[rel] = now if stale else mtime
        return stale

    def put(self, key: ChunkKey, kv: ChunkKV) -> None:
        rel, path = key.relpath(), self._path(key)
        with self._lock:
            if rel in self._sizes and path.exists():
                self._sizes.move_to_end(rel)
                return
        try:
            parts = serde.encode_parts(key, kv)
        except ValueError as e:
            log.warning("%s", e)
            return
        size = sum(memoryview(p).nbytes for p in parts)
        if size > self.max_bytes:
            return
        try:
            try:
                self._write(path, key, parts)
            except FileNotFoundError:  # the fan-out directory was removed under us: make it again, once
                self._dirs.discard(path.parent)
                self._write(path, key, parts)
        except OSError as e:
            self._write_failed(e)
            return
        if self.write_error is not None:
            self._write_ok()
        with self._lock:
            self._bytes += size - self._sizes.pop(rel, 0)
            self._sizes[rel] = size
            self._mtimes[rel] = time.time()
            self._evict()

    def _write(self, path: Path, key: ChunkKey, parts: list) -> None:
        """Write the entry to a temporary file beside `path`, then rename it over `path` (atomic)."""
        if path.parent not in self._dirs:
            if not os.path.isdir(self.anchor):  # the workspace was deleted or renamed: do not make it appear again
                raise FileNotFoundError(errno.ENOENT, "the directory holding the cache is gone", str(self.anchor))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        # os.open + writev: tempfile.mkstemp and a buffered file object cost ~40 us more per entry, CPU taken
        # from the model while indexing (README)
        fd, tmp = _create_tmp(path.parent, key.token_hash)
        try:
            try:
                _write_all(fd, parts)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

    def _write_failed(self, e: OSError) -> None:
        """Count a failed write; the first of an outage (or a new reason) is logged and reported, not every one:
        a full disk failed every chunk of an index run, one warning each."""
        reason = e.strerror or str(e)
        with self._lock:
            self.failed_writes += 1
            new, self.write_error = self.write_error != reason, reason
        if new:
            where = f": {e.filename}" if e.filename else ""
            msg = f"disk cache {self.dir} cannot be written ({reason}{where}): chunks are not kept on disk until it can"
            log.warning("%s", msg)
            if self.on_write_error is not None:
                self.on_write_error(msg)

    def _write_ok(self) -> None:
        with self._lock:
            was, self.write_error = self.write_error, None
        if was is not None:
            log.warning("disk cache %s can be written again", self.dir)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._sizes:
            rel, size = self._sizes.popitem(last=False)
            self._mtimes.pop(rel, None)
            self._bytes -= size
            _unlink(self.dir / rel)

    def contains(self, key: ChunkKey) -> bool:
        """Present and as long as its header says (catches truncation; bit flips are caught by `get`)."""
        try:
            with open(self._path(key), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                ok = serde.declared_size(f.read(4096)) == size
        except (FileNotFoundError, NotADirectoryError):  # gone, or a file where the cache directory was
            self._forget(key.relpath())
            return False
        except serde.CorruptEntry:
            ok = False
        except OSError:  # unreadable now (permissions, I/O): a miss, not damage to delete
            return False
        if not ok:
            log.warning("dropping truncated disk entry %s", key.to_str())
            self.dropped += 1
            self.delete(key)
        return ok

    def delete(self, key: ChunkKey) -> None:
        rel = key.relpath()
        with self._lock:  # with the lock, so that a concurrent `get` sees the entry gone (see `_used`)
            self._bytes -= self._sizes.pop(rel, 0)
            self._mtimes.pop(rel, None)
            _unlink(self.dir / rel)

    def _forget(self, rel: str) -> None:
        with self._lock:
            self._bytes -= self._sizes.pop(rel, 0)
            self._mtimes.pop(rel, None)

    def nbytes(self) -> int:
        return self._bytes

    def size_of(self, key: ChunkKey) -> int:
        return self._sizes.get(key.relpath(), 0)

    def __len__(self) -> int:
        return len(self._sizes)


class _Changed(Exception):
    """The file changed while it was read (another writer's rename): a miss, not damage."""


def _create_tmp(directory: Path, stem: str) -> tuple[int, str]:
    """A new temporary file `.<stem>.<random>.tmp` in `directory`, created exclusively (mode 0600, as mkstemp)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{stem}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, _O_TMP, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(directory))


def _write_all(fd: int, parts: list) -> None:
    """Write the buffers one after another (one writev; a short write goes on from where it stopped)."""
    views = [memoryview(p).cast("B") for p in parts]
    done = os.writev(fd, views)
    for v in views:
        if done >= len(v):
            done -= len(v)
            continue
        v, done = v[done:], 0
        while v:
            v = v[os.write(fd, v) :]


def _will_need(fd: int) -> None:
    """Ask the kernel to read the whole file ahead (a hint: where it is refused or missing, nothing changes)."""
    if hasattr(os, "posix_fadvise"):  # not on macOS or Windows
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot delete %s: %s", path, e.strerror)
