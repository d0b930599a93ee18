"""Where capsules live: RAM under a byte budget, least recently used spilled to disk and reloaded on demand.

Every capsule the store knows is indexed in memory by its metadata and token ids (not its KV), so
`longest_prefix` and `by_text_hash` consider spilled capsules too and load only the one they return.
Disk layout: <disk_dir>/<id>.capsule in the format of `capsule.serde`. A file that fails verification on
load is logged, deleted and reported as a miss: it is never served. So is a file whose header fails (or does
not name the file's id) when a store starts; `scan_dir`, `list_dir` and `verify_dir` inspect a directory
without changing it. A capsule of another model's fingerprint is never returned by the searches and is
refused by `get`. The disk LRU is by last use across restarts too: a use moves the file's mtime (when it is
over 10 minutes old), and a store starting on the directory orders the files by mtime.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from capsule import serde
from capsule.capsule import Capsule, CapsuleError, check_fingerprint
from capsule.config import CapsuleConfig

log = logging.getLogger(__name__)

_STALE_TMP_S = 60.0  # a temporary file this old belongs to a writer that died
_TOUCH_S = 600.0  # a used capsule's file mtime is moved to now when older than this (the LRU order across restarts)


@dataclasses.dataclass
class _Entry:
    """What the index keeps of every capsule, in memory or on disk."""

    id: str
    uri: str
    text_hash: str
    doc_version: int | None
    fingerprint: str
    parent: str | None
    created: float
    tokens: np.ndarray  # int32 [n]
    bytes: int  # in memory (spare tail included)
    disk_bytes: int = 0  # file size; 0: not on disk
    recipe: str = ""  # Capsule.recipe
    mtime: float = 0.0  # the file's mtime as last seen or set (time.time()); 0: not on disk

    @classmethod
    def of(cls, c: Capsule) -> _Entry:
        toks = np.asarray(c.tokens, dtype=np.int32)
        return cls(c.id, c.uri, c.text_hash, c.doc_version, c.fingerprint, c.parent, c.created, toks, c.bytes,
                   recipe=c.recipe)  # fmt: skip

    def matches(self, fingerprint: str | None, recipe: str | None) -> bool:
        """Of this model (and KV recipe); None: any."""
        return (fingerprint is None or self.fingerprint == fingerprint) and (recipe is None or self.recipe == recipe)

    def info(self, where: str) -> dict:
        return {
            "id": self.id, "uri": self.uri, "doc_version": self.doc_version, "text_hash": self.text_hash,
            "n_tokens": int(self.tokens.shape[0]), "fingerprint": self.fingerprint, "parent": self.parent,
            "created": self.created, "bytes": self.bytes, "disk_bytes": self.disk_bytes, "where": where,
            "recipe": self.recipe,
        }  # fmt: skip


def common_prefix(a, b) -> int:
    """Length of the common prefix of two token sequences (int arrays or lists)."""
    a, b = np.asarray(a), np.asarray(b)
    m = min(a.shape[0], b.shape[0])
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class CapsuleStore:
    def __init__(self, config: CapsuleConfig | None = None) -> None:
        self.config = config = config if config is not None else CapsuleConfig()
        self._lock = threading.RLock()
        self._index: dict[str, _Entry] = {}
        self._mem: collections.OrderedDict[str, Capsule] = collections.OrderedDict()  # LRU first
        self._mem_bytes = 0
        self._disk: collections.OrderedDict[str, int] = collections.OrderedDict()  # id -> file bytes, LRU first
        self._disk_bytes = 0
        self.dropped_corrupt = 0
        if config.disk_dir is not None:
            config.disk_dir.mkdir(parents=True, exist_ok=True)
            self._scan()

    # -- disk ------------------------------------------------------------------------------------

    def _path(self, cid: str) -> Path:
        assert self.config.disk_dir is not None
        return self.config.disk_dir / f"{cid}{serde.SUFFIX}"

    def _scan(self) -> None:
        """Index the disk tier; delete the temporary files of dead writers and the capsule files that fail."""
        now = time.time()
        for p in self.config.disk_dir.iterdir():
            if p.name.endswith(".tmp"):
                try:
                    if now - p.lstat().st_mtime > _STALE_TMP_S:
                        p.unlink(missing_ok=True)
                except OSError as e:
                    log.warning("cannot delete stale temporary file %s: %s", p, e.strerror)
        entries, damaged = scan_dir(self.config.disk_dir)
        for p, err in damaged:
            log.warning("dropping unreadable capsule file %s: %s", p, err)
            self.dropped_corrupt += 1
            try:
                p.unlink(missing_ok=True)
            except OSError as e:  # a directory named *.capsule, a read-only directory: skipped, left alone
                log.warning("cannot delete %s: %s", p, e.strerror)
        for e in entries:
            self._index[e.id] = e
            self._disk[e.id] = e.disk_bytes
            self._disk_bytes += e.disk_bytes
        self._evict_disk()

    def _write(self, c: Capsule) -> bool:
        """Put `c` on disk (once: capsules never change). False when there is no disk tier or it failed."""
        if self.config.disk_dir is None:
            return False
        if c.id in self._disk:
            self._used(c.id)
            return True
        try:
            # The directory may be gone (a cache cleanup while the server runs): made again, or every later
            # spill would fail and drop its capsule until a restart.
            self.config.disk_dir.mkdir(parents=True, exist_ok=True)
            size = serde.write(c, self._path(c.id), self.config.fsync)
        except (OSError, CapsuleError) as e:
            log.warning("cannot spill capsule %s to %s: %s", c.id, self.config.disk_dir, e)
            return False
        self._disk[c.id] = size
        self._disk_bytes += size
        self._index[c.id].disk_bytes, self._index[c.id].mtime = size, time.time()
        self._evict_disk(keep=c.id)
        return True

    def _evict_disk(self, keep: str | None = None) -> None:
        while self._disk_bytes > self.config.disk_bytes and self._disk:
            cid = next(iter(self._disk))
            if cid == keep:
                if len(self._disk) == 1:
                    break
                self._disk.move_to_end(cid)
                continue
            self._unlink(cid)
            if cid not in self._mem:
                self._index.pop(cid, None)
            log.info("capsule %s deleted from disk (disk budget)", cid)

    def _unlink(self, cid: str) -> None:
        size = self._disk.pop(cid, 0)
        self._disk_bytes -= size
        if cid in self._index:
            self._index[cid].disk_bytes, self._index[cid].mtime = 0, 0.0
        self._path(cid).unlink(missing_ok=True)

    def _used(self, cid: str) -> None:
        """Mark `cid`'s file most recently used: last in this store's disk LRU, and by its mtime, which orders the
        LRU a later store rebuilds in `_scan` (without it a restart deleted the oldest *written* file first, however
        often its capsule was used); the mtime only when older than _TOUCH_S, so that a capsule in constant use
        costs no metadata write per use. As `indexer.store_disk` does for KV entries."""
        if cid not in self._disk:
            return
        self._disk.move_to_end(cid)
        entry, now = self._index.get(cid), time.time()
        if entry is None or now - entry.mtime < _TOUCH_S:
            return
        entry.mtime = now  # also when it fails: one try per _TOUCH_S, not one per use
        try:
            os.utime(self._path(cid))
        except OSError:  # a read-only directory, a file another store deleted: the order is only lost across restarts
            pass

    # -- memory ----------------------------------------------------------------------------------

    def _evict_memory(self) -> None:
        while self._mem_bytes > self.config.memory_bytes and self._mem:
            cid, c = self._mem.popitem(last=False)
            self._mem_bytes -= c.bytes
            if not self._write(c):
                self._index.pop(cid, None)
                log.info("capsule %s dropped (memory budget, no disk tier)", cid)

    # -- public ----------------------------------------------------------------------------------

    def put(self, capsule: Capsule) -> None:
        """Keep `capsule` (most recently used); older ones spill to disk when memory is over budget."""
        with self._lock:
            if capsule.id in self._mem:
                self._mem.move_to_end(capsule.id)
                self._used(capsule.id)
                return
            entry = self._index.get(capsule.id)
            self._index[capsule.id] = _Entry.of(capsule)
            if entry is not None:
                self._index[capsule.id].disk_bytes, self._index[capsule.id].mtime = entry.disk_bytes, entry.mtime
                self._used(capsule.id)
            self._mem[capsule.id] = capsule
            self._mem_bytes += capsule.bytes
            self._evict_memory()

    def get(self, cid: str, fingerprint: str | None = None) -> Capsule | None:
        """The capsule, reloaded from disk if spilled; None if unknown or its file is damaged.

        Raises CapsuleError when `fingerprint` is given and differs from the capsule's.
        """
        with self._lock:
            entry = self._index.get(cid)
            if entry is None:
                return None
            if fingerprint is not None and entry.fingerprint != fingerprint:
                raise CapsuleError(
                    f"capsule {cid} was made by model {entry.fingerprint}, the loaded model is {fingerprint}: refused"
                )
            c = self._mem.get(cid)
            if c is not None:
                self._mem.move_to_end(cid)
                self._used(cid)  # its file too (when spilled before): a restart orders files by last use
                return c
            if cid not in self._disk:
                return None
            if not self._path(cid).is_file():  # deleted by another store on the directory (or by hand): not damage
                log.info("capsule file %s is gone", self._path(cid))
                self._unlink(cid)
                self._index.pop(cid, None)
                return None
            try:
                c = serde.read(self._path(cid), self.config.spare_tokens)
                if c.id != cid:
                    raise serde.CapsuleFormatError(f"file holds capsule {c.id}")
            except CapsuleError as e:
                log.warning("dropping damaged capsule file %s: %s", self._path(cid), e)
                self.dropped_corrupt += 1
                self._unlink(cid)
                self._index.pop(cid, None)
                return None
            if fingerprint is not None:
                check_fingerprint(c, fingerprint)
            self._used(cid)
            self._mem[cid] = c
            self._mem_bytes += c.bytes
            self._evict_memory()
            return c

    def spill(self, cid: str) -> bool:
        """Move one capsule out of memory to disk now (False: unknown, or no disk tier)."""
        with self._lock:
            c = self._mem.get(cid)
            if c is None:
                return cid in self._disk
            if not self._write(c):
                return False
            del self._mem[cid]
            self._mem_bytes -= c.bytes
            return True

    def drop(self, cid: str) -> bool:
        with self._lock:
            found = self._index.pop(cid, None) is not None
            c = self._mem.pop(cid, None)
            if c is not None:
                self._mem_bytes -= c.bytes
            if cid in self._disk:
                self._unlink(cid)
            return found

    def list(self, uri: str | None = None) -> list[dict]:
        """Metadata of every capsule (of `uri`), oldest first; "where": memory | disk | both."""
        with self._lock:
            out = []
            for e in sorted(self._index.values(), key=lambda e: e.created):
                if uri is not None and e.uri != uri:
                    continue
                mem, disk = e.id in self._mem, e.id in self._disk
                where = "both" if mem and disk else "memory" if mem else "disk"
                out.append(e.info(where))
            return out

    def longest_prefix(
        self, uri: str | None, tokens: list[int], fingerprint: str | None = None, recipe: str | None = None
    ) -> tuple[Capsule, int] | None:
        """The capsule sharing the longest token prefix with `tokens` (>= 1 token), with that length.

        Any uri qualifies; on equal length this `uri`'s capsules win, then the newest. Only capsules of
        `fingerprint` and of `recipe` are considered when they are given. To resume: keep k = n tokens when
        n == capsule.n (its last logits hold), else k = min(n, len(tokens) - 1) so at least one token is
        prefilled for fresh logits; then `restore(capsule, fp, n_tokens=k)` and prefill `tokens[k:]`.
        """
        want = np.asarray(tokens, dtype=np.int32)
        with self._lock:
            scored = []
            for e in self._index.values():
                if not e.matches(fingerprint, recipe):
                    continue
                n = common_prefix(e.tokens, want)
                if n:
                    scored.append((n, e.uri == uri, e.created, e.id))
            for n, _, _, cid in sorted(scored, reverse=True):
                c = self.get(cid)
                if c is not None:  # None: its file was damaged and is gone; try the next best
                    return c, n
            return None

    def by_text_hash(
        self, uri: str, text_hash: str, fingerprint: str | None = None, recipe: str | None = None
    ) -> Capsule | None:
        """The newest capsule of `uri` taken when the document had this text (an undo back to it)."""
        with self._lock:
            hits = [
                e for e in self._index.values()
                if e.uri == uri and e.text_hash == text_hash and e.matches(fingerprint, recipe)
            ]  # fmt: skip
            for e in sorted(hits, key=lambda e: e.created, reverse=True):
                c = self.get(e.id)
                if c is not None:
                    return c
            return None

    def prune(self, uri: str | None = None, keep_last: int | None = None, older_than_s: float | None = None) -> int:
        """Drop capsules (of `uri`, or all): those older than `older_than_s`, and all but the newest
        `keep_last` per document. Returns how many were dropped."""
        now = time.time()
        with self._lock:
            by_uri: dict[str, list[_Entry]] = collections.defaultdict(list)
            for e in self._index.values():
                if uri is None or e.uri == uri:
                    by_uri[e.uri].append(e)
            doomed = []
            for entries in by_uri.values():
                entries.sort(key=lambda e: e.created, reverse=True)
                for i, e in enumerate(entries):
                    too_old = older_than_s is not None and now - e.created > older_than_s
                    if too_old or (keep_last is not None and i >= keep_last):
                        doomed.append(e.id)
            for cid in doomed:
                self.drop(cid)
            return len(doomed)

    def stats(self) -> dict:
        with self._lock:
            return {
                "capsules": len(self._index), "in_memory": len(self._mem), "on_disk": len(self._disk),
                "memory_bytes": self._mem_bytes, "disk_bytes": self._disk_bytes,
                "dropped_corrupt": self.dropped_corrupt,
            }  # fmt: skip

    def __contains__(self, cid: str) -> bool:
        return cid in self._index

    def __len__(self) -> int:
        return len(self._index)


def _misnamed(path: Path, cid: str) -> str | None:
    """Why the file at `path` cannot be capsule `cid`'s (the store finds a capsule by its id), or None."""
    if path.name != f"{cid}{serde.SUFFIX}":
        return f"holds capsule {cid!r:.80}, not the one its file name says"
    return None


def scan_dir(directory: Path) -> tuple[list[_Entry], list[tuple[Path, str]]]:
    """Index every capsule file in `directory` by its header and token ids, oldest file first. Reads only.

    Returns (entries, damaged): damaged holds (path, reason) for every *.capsule that is not a capsule file with
    a sound header named after its id; a file deleted while the directory is read (another store) is left out.
    Neither the KV nor the sum is read: `CapsuleStore.get` verifies a file when it loads it, `verify_dir` reads
    them all.
    """
    found, damaged = [], []
    for p in Path(directory).iterdir():
        if p.suffix != serde.SUFFIX:
            continue
        try:
            head, tokens = serde.read_info(p)
            st = p.stat()
        except (CapsuleError, OSError) as e:
            if not os.path.lexists(p):  # dropped by another store (or a CLI) while listing: gone, not damaged
                continue
            damaged.append((p, str(e) if isinstance(e, CapsuleError) else f"cannot read {p}: {e.strerror}"))
            continue
        err = _misnamed(p, head["id"])
        if err is not None:
            damaged.append((p, err))
            continue
        e = _Entry(
            head["id"], head["uri"], head["text_hash"], head["doc_version"], head["fingerprint"], head["parent"],
            head["created"], np.asarray(tokens, np.int32), 0, st.st_size, head["recipe"], st.st_mtime,
        )  # fmt: skip
        found.append((st.st_mtime, e))
    found.sort(key=lambda f: f[0])
    return [e for _, e in found], sorted(damaged)


def list_dir(directory: Path, uri: str | None = None) -> tuple[list[dict], list[tuple[Path, str]]]:
    """What `CapsuleStore.list` shows of the capsules in `directory` (of `uri`) and its damaged files; reads only."""
    entries, damaged = scan_dir(directory)
    infos = [e.info("disk") for e in sorted(entries, key=lambda e: e.created) if uri is None or e.uri == uri]
    return infos, damaged


def verify_dir(directory: Path) -> list[tuple[Path, str | None]]:
    """Fully read and verify every capsule file in `directory`: (path, None if sound else the error). Reads only;
    a file deleted while it runs (another store) is left out."""
    out = []
    for p in sorted(Path(directory).glob(f"*{serde.SUFFIX}")):
        try:
            out.append((p, _misnamed(p, serde.read(p, spare_tokens=0).id)))
        except CapsuleError as e:
            if os.path.lexists(p):  # else dropped by another store while verifying: gone, not damaged
                out.append((p, str(e)))
    return out


def dir_bytes(directory: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(directory).glob(f"*{serde.SUFFIX}"))
