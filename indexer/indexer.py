"""The indexer: workspace -> chunks -> missing KV precomputed into the store, kept current by `update`.

The CLI (`kvblend index`), the watcher and the language server all go through `index()` (a full walk) and
`update(paths)` (incremental: a file whose text hash did not change is not even re-chunked; of a changed
file only chunks whose key is not in the store are computed, so editing one function recomputes its chunk
and nothing else).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from blend.cacheblend import ChunkKV
from blend.loader import LoadedModel
from blend.tokenizer import REPO_NAME
from indexer import serde
from indexer.chunker import Chunk, Chunker, text_hash
from indexer.commits import commit_chunks, commit_texts
from indexer.config import IndexerConfig
from indexer.ignore import IgnoreRules
from indexer.precompute import PrecomputeQueue, Precomputer, Priority, ProgressCallback, default_workers
from indexer.store import KVStore, TieredStore
from indexer.walk import SourceFile, WalkResult, read_source, walk_workspace

log = logging.getLogger(__name__)

MAX_RECENT = 64  # recently edited paths kept (retrieval and precompute order); a rename storm left thousands


@dataclasses.dataclass
class UpdateResult:
    files: int = 0  # files looked at
    added: int = 0  # chunks new to the index
    removed: int = 0  # chunks gone from the index
    unchanged: int = 0  # chunks whose key was already indexed
    queued: int = 0  # chunks whose KV was missing from the store and went to the precompute queue
    computed: int = 0  # chunks computed before `update` returned (0 in background mode)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class IndexStats:
    files: int
    chunks: int
    tokens: int
    bytes: int  # stored bytes of the index's distinct chunks
    seconds: float
    tokens_per_s: float
    skipped: dict[str, int]
    computed: int  # chunks precomputed by this run (the others were already in the store)
    reused: int
    engine_seconds: float  # time spent running the model on chunks, summed over the precompute workers (one
    # worker: the part of `seconds` not spent walking, chunking, storing)
    workers: int = 1  # precompute workers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_readme(path: str) -> bool:
    return PurePosixPath(path).name.lower().startswith("readme")


class Indexer:
    def __init__(
        self,
        cfg: IndexerConfig,
        lm: LoadedModel,
        store: KVStore | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.lm = lm
        mc = lm.config
        self.shape = (mc.n_layers, mc.n_kv_heads, mc.head_dim)
        dev, dtype = lm.model.device, lm.model.dtype
        if store is None:
            store = TieredStore.from_config(cfg.store, self.shape, dtype=dtype, device=dev)
        self.store = store
        disk = store.tier("disk") if isinstance(store, TieredStore) else None
        if disk is not None and Path(disk.dir).is_relative_to(cfg.root):
            disk.anchor = cfg.root  # `rm -rf .kvblend` makes it again; a deleted workspace is not
        prefix = tuple(lm.tokenizer.encode(f"{REPO_NAME}{cfg.repo_name}\n")) if cfg.shared_prefix else ()
        self.chunker = Chunker(lm.tokenizer, lm.fingerprint, cfg.max_chunk_tokens, cfg.min_chunk_tokens, prefix)
        self.engine = Precomputer(lm.model, prefix)
        self.rules = IgnoreRules(cfg.root, cfg.ignores)
        self.workers = cfg.workers or default_workers(dev)
        self.queue = PrecomputeQueue(self._compute, progress, self.workers)
        self.files: dict[str, list[Chunk]] = {}  # path -> its chunks in file order
        self.commits: list[Chunk] = []
        self.skipped: collections.Counter = collections.Counter()
        self.open_paths: set[str] = set()
        self.recent: collections.OrderedDict[str, None] = collections.OrderedDict()  # most recent last
        self.computed = 0  # chunks run through the engine by this indexer
        self.engine_seconds = 0.0  # time spent in the engine by this indexer
        self.generation = 0  # bumped whenever the set of chunks changes (retrieval caches key on it)
        self._hashes: dict[str, str] = {}  # path -> text hash of the version indexed
        # While `index()` works from a walk read earlier, `update` stamps what it looks at (path or directory ->
        # update number): index leaves alone what an update saw after its walk began (newer than the walk).
        self._updates = 0
        self._stamps: dict[str, int] = {}
        self._indexing = 0  # index() calls in progress (stamps are kept only while one is)
        self._lock = threading.RLock()
        self._commits_lock = threading.Lock()
        self._count = threading.Lock()  # computed, engine_seconds: updated by every precompute worker
        self._background = False

    # -- computing ---------------------------------------------------------------------------

    def _compute(self, chunk: Chunk, hot: bool | None = None) -> ChunkKV:
        """Run the engine on `chunk` and store its KV. Chunks of open and recently edited files (and any chunk a
        request is waiting for: `hot`) go to every tier; the rest of a background index skips the memory tier,
        so that indexing a repository does not evict the open files' chunks (a later read promotes them)."""
        t0 = time.perf_counter()
        kv = self.engine(chunk.tokens)  # fp16 (the stored precision) on the model's device
        seconds = time.perf_counter() - t0
        if hot is None:
            hot = self._priority(chunk) <= Priority.RECENT
        if hot or not isinstance(self.store, TieredStore):
            self.store.put(chunk.key, kv)
        else:
            self.store.put_cold(chunk.key, kv)  # memory too while the disk cannot be written
        with self._count:
            self.engine_seconds += seconds
            self.computed += 1
        return kv

    def get_kv(self, chunk: Chunk) -> ChunkKV:
        """The chunk's KV from the store, or computed now (a miss, or an entry that failed verification)."""
        kv = self.store.get(chunk.key)
        if kv is not None and len(kv) == chunk.n_tokens:
            return kv
        self.queue.discard({chunk.key})
        kv = self._compute(chunk, hot=True)
        dtype = self.lm.model.dtype
        return ChunkKV(kv.tokens, kv.k.to(dtype), kv.v.to(dtype), kv.positions)

    def _priority(self, chunk: Chunk) -> Priority:
        return Priority.COMMIT if chunk.kind == "commit" else self._file_priority(chunk.path)

    def _file_priority(self, path: str) -> Priority:
        if path in self.open_paths:
            return Priority.OPEN
        if path in self.recent:
            return Priority.RECENT
        return Priority.README if is_readme(path) else Priority.REST

    def _enqueue(self, chunks: list[Chunk], result: UpdateResult) -> None:
        if not self.cfg.precompute:
            return  # computed on first use, by `get_kv`
        for c in chunks:
            if self.store.contains(c.key):
                continue
            self.queue.submit(c, self._priority(c))
            result.queued += 1

    # -- index maintenance -------------------------------------------------------------------

    def _rel(self, path: str | Path) -> str | None:
        """`path` relative to the root, or None outside it. The root is resolved, while editors and watchers may
        name files through a link to it: the parent is resolved too (not the file itself, which may be a link)."""
        p = Path(os.path.normpath(path if Path(path).is_absolute() else self.cfg.root / path))
        if not p.is_relative_to(self.cfg.root):
            real = Path(os.path.realpath(p))
            p = real if real == self.cfg.root else Path(os.path.realpath(p.parent)) / p.name
            if not p.is_relative_to(self.cfg.root):
                return None
        rel = p.relative_to(self.cfg.root).as_posix()
        return "" if rel == "." else rel

    def _set_file(self, sf: SourceFile, result: UpdateResult) -> None:
        h = text_hash(sf.text)
        old = self.files.get(sf.path, [])
        result.files += 1
        if self._hashes.get(sf.path) == h:
            result.unchanged += len(old)
            return
        chunks = self.chunker.chunk_file(sf.path, sf.text)
        old_keys, new_keys = {c.key for c in old}, {c.key for c in chunks}
        result.added += len(new_keys - old_keys)
        result.removed += len(old_keys - new_keys)
        result.unchanged += len(new_keys & old_keys)
        self.files[sf.path], self._hashes[sf.path] = chunks, h
        self.generation += 1
        self._enqueue([c for c in chunks if c.key not in old_keys], result)

    def _set_files(self, files: list[SourceFile], result: UpdateResult, since: int) -> None:
        """Index's files, read by its walk: those an update has looked at since (`since`: the update number when
        the walk began) are newer in the index than in the walk, and left alone."""
        for sf in files:
            if self._background:
                self.queue.pause_while_held()
            with self._lock:
                if not self._updated_since(sf.path, since):
                    self._set_file(sf, result)

    def _updated_since(self, rel: str, since: int) -> bool:
        """Whether an update after number `since` looked at `rel` or a directory above it ("": the root)."""
        parts = rel.split("/")
        return any(self._stamps.get("/".join(parts[:i]), 0) > since for i in range(len(parts) + 1))

    def _drop(self, rel: str, result: UpdateResult, itself: bool = True, below: bool = True) -> None:
        """Drop the file `rel` (`itself`) and the files below it (`below`; rel "": every file)."""
        under = [p for p in self.files if not rel or p.startswith(rel + "/")] if below else []
        for path in under + ([rel] if itself and rel in self.files else []):
            result.removed += len({c.key for c in self.files.pop(path)})
            self._hashes.pop(path, None)
            self.generation += 1

    def _finish(self, result: UpdateResult) -> UpdateResult:
        if not self._background:
            result.computed = self.queue.run_pending()
        return result

    def update(self, paths: Iterable[str | Path], recent: bool = True) -> UpdateResult:
        """Re-index these files or directories (created, changed, deleted or moved); `recent` marks them as
        recently edited (retrieval and precompute order)."""
        result = UpdateResult()
        with self._lock:
            rels = sorted({r for r in (self._rel(p) for p in paths) if r is not None})
            for rel in rels:
                if rel and recent:
                    self.recent.pop(rel, None)
                    self.recent[rel] = None
            while len(self.recent) > MAX_RECENT:  # every request carries the list: the oldest go
                self.recent.popitem(last=False)
            # The rules are read again every time: a directory renamed, or deleted and made again, must be judged
            # by the .gitignore it holds now, not by one read earlier under its name.
            self.rules = IgnoreRules(self.cfg.root, self.cfg.ignores)
            if any(IgnoreRules.is_rule_file(r) for r in rels):
                rels = [""]  # what is ignored changed: look at everything again
            self._updates += 1
            for rel in rels:
                if self._indexing:
                    self._stamps[rel] = self._updates
                try:
                    self._update_one(rel, result)
                except OSError as e:  # one path that cannot be looked at (permissions) must not lose the others
                    log.warning("cannot index %s: %s", rel or ".", e.strerror or e)
                    result.skipped["unreadable"] += 1
        return self._finish(result)

    def _update_one(self, rel: str, result: UpdateResult) -> None:
        path = self.cfg.root / rel
        if os.path.isdir(path) and not os.path.islink(path):  # False, not PermissionError, in an unsearchable dir
            if rel and self.rules.is_ignored(rel, is_dir=True):
                self._drop(rel, result)
                return
            self._drop(rel, result, below=False)  # a file replaced by this directory
            for sf in self._walk(rel, result):
                self._set_file(sf, result)
            return
        got = read_source(self.cfg, self.rules, rel)
        if isinstance(got, str):
            self._drop(rel, result)
            if got != "missing":
                result.skipped[got] += 1
            return
        self._drop(rel, result, itself=False)  # a directory replaced by this file
        self._set_file(got, result)

    def _walk(
        self, rel: str, result: UpdateResult, walk: WalkResult | None = None, since: int | None = None
    ) -> list[SourceFile]:
        """The indexable files below directory `rel` (`walk`: already read) in precompute-priority order (open,
        recently edited, README, the rest; path order within each); files indexed before and gone now are
        dropped, but for those an update looked at after number `since` (index's walk is older than them). The
        caller holds the lock."""
        walk = walk or walk_workspace(self.cfg, self.rules, under=rel)
        seen = {f.path for f in walk.files}
        for p in [p for p in self.files if (not rel or p.startswith(rel + "/")) and p not in seen]:
            if since is None or not self._updated_since(p, since):
                self._drop(p, result)
        result.skipped.update(walk.skipped)
        return sorted(walk.files, key=lambda f: self._file_priority(f.path))  # stable: path order within

    def refresh_commits(self) -> UpdateResult:
        """Re-read the last K commits (after a commit, checkout or pull)."""
        result = UpdateResult()
        self._set_commits(result)
        return self._finish(result)

    def _set_commits(self, result: UpdateResult) -> None:
        # One reader of the history at a time: two overlapping refreshes (watcher flushes) could otherwise set
        # the older read last. Not under the index lock: reading git may take a while.
        with self._commits_lock:
            texts = commit_texts(self.cfg.root, self.cfg.n_commits, self.cfg.commit_diff_lines, self.rules.is_ignored)
            with self._lock:
                chunks = commit_chunks(self.chunker, texts)
                old = {c.key for c in self.commits}
                self.commits = chunks
                self.generation += 1
                new = {c.key for c in chunks}
                result.added += len(new - old)
                result.removed += len(old - new)
                result.unchanged += len(new & old)
                self._enqueue([c for c in chunks if c.key not in old], result)

    def index(self) -> IndexStats:
        """Walk the whole workspace and the git history; compute every chunk missing from the store."""
        t0, computed0, engine0 = time.perf_counter(), self.computed, self.engine_seconds
        with self._lock:
            since = self._updates  # what later updates look at is newer than the walk below
            self._indexing += 1
        try:
            self._index_all(since)
        finally:
            with self._lock:
                self._indexing -= 1
                if not self._indexing:
                    self._stamps.clear()
        seconds = time.perf_counter() - t0
        chunks = self.chunks()
        tokens = sum(c.n_tokens for c in chunks)
        computed = self.computed - computed0
        return IndexStats(
            files=len(self.files),
            chunks=len(chunks),
            tokens=tokens,
            bytes=self.stored_bytes(),
            seconds=round(seconds, 4),
            tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
            skipped=dict(sorted(self.skipped.items())),
            computed=computed,
            reused=len({c.key for c in chunks}) - computed,
            engine_seconds=round(self.engine_seconds - engine0, 4),
            workers=self.workers,
        )

    def _index_all(self, since: int) -> None:
        # Queued in priority order: open, recently edited and README files, then the commits, then the rest.
        # The workers start once the first three are queued and compute while the rest is being chunked
        # (claims stay in priority order: nothing queued later outranks what is queued).
        # The lock is taken per file, so requests (retrieval) are not held up by a long walk, and in background
        # mode the walk also pauses between files while a request holds the queue. Updates may run meanwhile
        # (the watcher, the editor): what they looked at after `since` is newer than this walk and kept.
        result = UpdateResult()
        with self._lock:
            self.rules = IgnoreRules(self.cfg.root, self.cfg.ignores)  # the ignore files as they are now
        walk = walk_workspace(self.cfg, self.rules)  # reads the files: no lock needed
        with self._lock:
            files = self._walk("", result, walk, since)
            self.skipped = result.skipped
        n_first = sum(self._file_priority(f.path) < Priority.REST for f in files)
        self._set_files(files[:n_first], result, since)
        self._set_commits(result)
        pipelined = not self._background and self.cfg.precompute
        if pipelined:
            self.start()
        try:
            self._set_files(files[n_first:], result, since)
            self._finish(result)
            if self._background:
                self.queue.wait()
        finally:
            if pipelined:
                self.queue.stop()
                self._background = False

    # -- queries -----------------------------------------------------------------------------

    def chunks(self) -> list[Chunk]:
        """Every indexed chunk: files in path order (chunks in file order), then commits newest first."""
        with self._lock:
            return [c for p in sorted(self.files) for c in self.files[p]] + list(self.commits)

    def stored_bytes(self) -> int:
        """Bytes of the distinct chunks' entries (disk file sizes where the disk tier has them, else k + v)."""
        disk = self.store.tier("disk") if isinstance(self.store, TieredStore) else None
        total, seen = 0, set()
        for c in self.chunks():
            if c.key in seen:
                continue
            seen.add(c.key)
            size = disk.size_of(c.key) if disk is not None else 0
            total += size or serde.entry_nbytes(c.n_tokens, *self.shape)
        return total

    def set_open(self, paths: Iterable[str | Path]) -> None:
        """The files open in the editor: their chunks are computed first and retrieved first."""
        with self._lock:
            self.open_paths = {r for r in (self._rel(p) for p in paths) if r}
        self.queue.reprioritize(self.open_paths, Priority.OPEN)

    # -- background mode ---------------------------------------------------------------------

    def start(self) -> None:
        """Compute in a background thread from now on (`update` returns before its chunks are computed)."""
        self._background = True
        self.queue.start()

    def wait(self, timeout: float | None = None) -> bool:
        return self.queue.wait(timeout) if self._background else True

    def close(self) -> None:
        self.queue.stop()
        self._background = False
        self.store.close()
