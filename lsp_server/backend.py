"""What the handlers call: model and indexer lifecycle, request superseding and debounce, warm-up (status and
progress reporting: `status.py`; capsule requests and agent edits: `agent.py`).

Threads: the asyncio loop runs the handlers; one worker thread ("kvblend-model") runs every completion and
warm-up on the model, one at a time; the indexer computes chunk KV in its own background thread; watchdog
has its own. Anything sent to the client from another thread goes through `loop.call_soon_threadsafe`.

Superseding: every request takes a sequence number and becomes the latest for its document. It waits the
debounce, then runs on the worker; between decode steps the Completer polls `cancelled()`, which turns true
once a newer request for the same document (or `$/cancelRequest`) arrived. A superseded request answers
at once with no items.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from kvblend.completer import Completer
from kvblend.completion import Completion, CompletionRequest
from kvblend.settings import Settings
from lsp_server import methods
from lsp_server.agent import CapsulesAndEdits
from lsp_server.convert import lsp_document, lsp_path, lsp_request
from lsp_server.status import StatusReporting

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Fixed for the server's life (command line, then initializationOptions)."""

    model: Path | None = None  # None: the bundled default model
    device: str | None = None
    redis_url: str | None = None  # a shared KV tier
    cache_dir: Path | None = None  # None: <workspace>/.kvblend/cache
    index: bool = True  # index the workspace (off: local prompt only)
    watch: bool = True  # the server-side watchdog watcher
    capsule_memory_bytes: int = 1 << 30  # capsules kept in RAM; older ones spill to <cache>/capsules
    engine: str = "torch"  # torch (ours) | vllm (vLLM serves, fed blended KV; see kvblend.engine)


class Backend(StatusReporting, CapsulesAndEdits):
    def __init__(self, server: LanguageServer, options: ServerOptions) -> None:
        self.server = server
        self.options = options
        self.settings = Settings()
        self.root: Path | None = None
        self.completer: Completer | None = None
        self.indexer = None
        self.watcher = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvblend-model")
        self.loaded: concurrent.futures.Future = concurrent.futures.Future()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.counters: collections.Counter = collections.Counter()
        self.last_latency_ms: float | None = None
        self._init_status()
        self._seq = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._warm: dict[str, asyncio.TimerHandle] = {}
        self._init_edits()
        # Changed files waiting for one indexer update on the worker: a storm of didSave / watched-file events
        # is one job, not one per event queued ahead of every completion.
        self._changed_files: dict[Path, None] = {}
        self._files_lock = threading.Lock()
        # Set by `shutdown`; under `_life`, so that the index thread cannot start the watcher (or report ready)
        # after shutdown stopped everything.
        self._shut = False
        self._life = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def initialize(self, params: types.InitializeParams) -> list[str]:
        """Workspace root and settings from the initialize request; returns warnings to show."""
        folders = params.workspace_folders or []
        uri = folders[0].uri if folders else params.root_uri
        root = lsp_path(uri) if uri else (Path(params.root_path) if params.root_path else None)
        self.root = root.resolve() if root is not None and root.is_dir() else None
        opts = params.initialization_options
        start_up = []  # warnings about the start-up keys (paths and URLs: strings only)
        if isinstance(opts, dict):
            for key, field in (("model", "model"), ("redisUrl", "redis_url")):
                value = opts.get(key)
                if value is None or value == "" or getattr(self.options, field) is not None:
                    continue
                if not isinstance(value, str):
                    start_up.append(f"{key} must be a string, got {type(value).__name__}: ignored")
                    continue
                self.options = dataclasses.replace(self.options, **{field: Path(value) if key == "model" else value})
        self.settings, warnings = Settings.from_options(opts)
        warnings = start_up + warnings
        if len(folders) > 1:
            warnings.append(f"kvblend indexes the first workspace folder only ({folders[0].name})")
        return warnings

    async def start(self) -> None:
        """After `initialized`: load the model, then index the workspace in the background."""
        self.loop = asyncio.get_running_loop()
        self.send_status(methods.StatusParams("loading", "loading model"))
        try:
            lm = await self.loop.run_in_executor(self.executor, self._load)
        except Exception as e:  # a bad model path must not kill the server: report and serve nothing
            log.exception("model load failed")
            self.loaded.set_exception(e)
            self.send_status(methods.StatusParams("error", f"model load failed: {e}"))
            self.show(types.MessageType.Error, f"kvblend: cannot load the model: {e}")
            return
        indexer = None
        if self.root is not None and self.options.index:
            try:
                indexer = self._make_indexer(lm)
            except Exception as e:
                log.exception("indexer failed to start")
                self.show(types.MessageType.Warning, f"kvblend: workspace not indexed: {e}")
        self.indexer = indexer
        engine = None
        if self.options.engine != "torch":
            try:
                engine = await self.loop.run_in_executor(self.executor, self._make_engine, lm)
            except Exception as e:  # no vLLM, no memory: say so and serve on our own engine
                log.exception("engine %s failed to start", self.options.engine)
                self.show(types.MessageType.Warning, f"kvblend: engine {self.options.engine} unavailable ({e}); "
                                                     "serving with the torch engine")  # fmt: skip
        capsules = None
        if engine is None:  # capsules hold our engine's KV
            try:
                capsules = self._make_capsules()
            except Exception as e:  # whatever is in the capsule directory must not stop completions
                log.exception("capsule store failed to start")
                self.show(types.MessageType.Warning, f"kvblend: capsules off: {e}")
        try:
            self.completer = Completer(lm, self.settings, indexer, capsules, engine)
        except Exception as e:  # requests wait on `loaded`: it must be set, here with the error
            log.exception("completer failed to start")
            self.loaded.set_exception(e)
            self.send_status(methods.StatusParams("error", f"completer failed to start: {e}"))
            self.show(types.MessageType.Error, f"kvblend: cannot start completions: {e}")
            return
        self.loaded.set_result(self.completer)
        if indexer is None:
            self.send_status(methods.StatusParams("ready", "no workspace index"))
            return
        await self._begin_progress()
        threading.Thread(target=self._index, name="kvblend-index", daemon=True).start()
        await self._watch_files()

    async def _watch_files(self) -> None:
        """Ask the client for workspace/didChangeWatchedFiles (dynamic registration), besides our watcher:
        the client also sees changes the server's watcher cannot (remote file systems, its own saves)."""
        ws = self.server.client_capabilities.workspace
        dcw = ws.did_change_watched_files if ws else None
        if not (dcw and dcw.dynamic_registration):
            return
        watcher = types.FileSystemWatcher(glob_pattern="**/*")
        reg = types.Registration(
            id="kvblend-watch",
            method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(watchers=[watcher]),
        )
        try:
            await self.server.client_register_capability_async(types.RegistrationParams(registrations=[reg]))
        except Exception as e:  # the client refused: the server-side watcher still runs
            log.info("client refused file watching: %s", e)

    def _load(self):
        from blend.loader import load_model

        return load_model(self.options.model, device=self.options.device)

    def _make_engine(self, lm):
        from kvblend.engine import make_engine

        return make_engine(self.options.engine, lm)

    def _make_indexer(self, lm):
        from indexer import Indexer, IndexerConfig, StoreConfig

        tiers = ("memory", "disk", "redis") if self.options.redis_url else ("memory", "disk")
        store = StoreConfig(tiers=tiers, redis_url=self.options.redis_url)
        cfg = IndexerConfig(self.root, cache_dir=self.options.cache_dir, store=store)
        indexer = Indexer(cfg, lm, progress=self._on_progress)
        self._watch_disk(indexer.store.tier("disk"))
        return indexer

    def _make_capsules(self):
        from capsule import CapsuleConfig, CapsuleStore

        disk = None
        if self.root is not None:
            disk = (self.options.cache_dir or self.root / ".kvblend" / "cache") / "capsules"
        try:
            return CapsuleStore(CapsuleConfig(memory_bytes=self.options.capsule_memory_bytes, disk_dir=disk))
        except OSError as e:  # an unwritable cache directory: capsules in memory only
            log.warning("capsule spill directory %s unusable (%s): memory only", disk, e)
            return CapsuleStore(CapsuleConfig(memory_bytes=self.options.capsule_memory_bytes))

    def _index(self) -> None:
        idx = self.indexer
        try:
            idx.start()
            stats = idx.index()
        except Exception as e:
            with self._life:
                if self._shut:  # the closed indexer stopped it: not a failure to report
                    return
                log.exception("indexing failed")
                self._post(self._end_progress, f"indexing failed: {e}")
                self._post(self.send_status, methods.StatusParams("error", f"indexing failed: {e}"))
            return
        with self._life:
            if self._shut:  # shutdown closed the indexer mid-index: no "ready", no watcher left running
                return
            msg = f"indexed {stats.files} files, {stats.chunks} chunks"
            self._post(self._end_progress, msg)
            self._post(self._ready, msg)
            if self.options.watch:
                from indexer.watcher import Watcher

                self.watcher = Watcher(idx).start()

    def shutdown(self) -> None:
        """Stop the watcher and the indexer; a completion running or waiting is cancelled (it stops at its next
        decode step, so that the process can exit promptly), and so is every pending warm-up."""
        with self._life:
            self._shut = True
            watcher = self.watcher
        self._latest.clear()  # every request's `cancelled()` turns true
        for uri in list(self._warm):
            self._cancel_warm(uri)
        if watcher is not None:
            watcher.stop()
        if self.indexer is not None:
            self.indexer.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- settings ------------------------------------------------------------------------------

    def change_settings(self, options: Any) -> None:
        settings, warnings = Settings.from_options(options, base=self.settings)
        for w in warnings:
            self.show(types.MessageType.Warning, f"kvblend: {w}")
        self.settings = settings
        if self.completer is not None:
            self.executor.submit(self.completer.update_settings, settings)

    # -- completion ----------------------------------------------------------------------------

    def document(self, uri: str):
        doc = lsp_document(self.server.workspace, uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: send textDocument/didOpen first")
        return doc

    async def complete(self, uri: str, position: types.Position, trigger: str) -> Completion | None:
        """The completion for a request, or None when it was superseded or nothing can be completed."""
        seq = next(self._seq)
        self._latest[uri] = seq
        self._cancel_warm(uri)
        req = lsp_request(self.document(uri), position, self.root, trigger)
        if "\x00" in req.text[max(0, req.cursor - 4096) : req.cursor + 4096]:
            self.counters["binary_skipped"] += 1
            return None
        cancel = threading.Event()  # set by $/cancelRequest

        def cancelled() -> bool:
            return self._latest.get(uri) != seq or cancel.is_set()

        try:
            if self.settings.debounce_ms:
                await asyncio.sleep(self.settings.debounce_ms / 1000.0)
            completer = await self._completer()
            if cancelled():
                completer.stats.count("superseded")
                return None
            t0 = time.perf_counter()
            result = await self.loop.run_in_executor(self.executor, completer.complete, req, cancelled)
        except asyncio.CancelledError:  # $/cancelRequest: stop the worker too
            cancel.set()
            raise
        # cancelled() again: the document may have changed after the worker's last poll (its result belongs
        # to text the editor no longer shows)
        if result.stop_reason == "cancelled" or cancelled():
            return None
        self.last_latency_ms = round((time.perf_counter() - t0) * 1000.0, 1)
        return result

    # -- idle warm-up --------------------------------------------------------------------------

    def schedule_warm(self, uri: str, cursor: int | None) -> None:
        """After an edit, once the document has been idle `warmup_ms`, prepare its next request's KV."""
        if self.loop is None or not self.settings.warmup_ms or cursor is None:
            return
        self._cancel_warm(uri)
        seq = self._latest.get(uri)
        self._warm[uri] = self.loop.call_later(self.settings.warmup_ms / 1000.0, self._warm_now, uri, cursor, seq)

    def changed(self, uri: str) -> None:
        """An edit: a completion still running for the document's older text is dropped, as a newer request's
        arrival drops it (its suggestion was made for text and a position the editor no longer has)."""
        self._latest[uri] = next(self._seq)

    def closed(self, uri: str) -> None:
        """A closed document: its pending warm-up is cancelled and a completion still running for it is dropped
        (it is no longer the latest request), and nothing is kept per document."""
        self._cancel_warm(uri)
        self._latest.pop(uri, None)

    def _cancel_warm(self, uri: str) -> None:
        handle = self._warm.pop(uri, None)
        if handle is not None:
            handle.cancel()

    def _warm_now(self, uri: str, cursor: int, seq: int | None) -> None:
        self._warm.pop(uri, None)
        if self.completer is None or self._latest.get(uri) != seq:
            return
        doc = lsp_document(self.server.workspace, uri)
        if doc is None or cursor > len(doc.source):
            return
        from lsp_server.convert import lsp_relative

        req = CompletionRequest(lsp_relative(uri, self.root), doc.source, cursor, uri, doc.version)
        fut = self.executor.submit(self._warm_job, req, seq)
        fut.add_done_callback(_log_failure)

    def _warm_job(self, req: CompletionRequest, seq: int | None) -> None:
        """On the worker: a request or an edit since the warm-up was queued makes it moot, and running it would
        only delay that request."""
        if self._latest.get(req.uri) == seq:
            self.completer.warm(req)

    # -- the loaded completer ------------------------------------------------------------------

    async def _completer(self) -> Completer:
        """The completer once loaded. While the model cannot load, a request gets that error as one line (the
        status and a message said so at start-up), not the traceback pygls would attach."""
        try:
            return await asyncio.wrap_future(self.loaded)
        except Exception as e:
            raise JsonRpcInternalError(f"kvblend is not serving: {e}") from None

    # -- files and feedback --------------------------------------------------------------------

    def files_changed(self, uris: list[str]) -> None:
        """Queue the files for re-indexing; one worker job takes every file changed until it runs."""
        if self.indexer is None:
            return
        paths = [p for p in (lsp_path(u) for u in uris) if p is not None]
        if not paths:
            return
        with self._files_lock:
            queued = bool(self._changed_files)
            self._changed_files.update(dict.fromkeys(paths))
        if not queued:
            fut = self.executor.submit(self._update_files)
            fut.add_done_callback(_log_failure)

    def _update_files(self) -> None:
        with self._files_lock:
            paths, self._changed_files = list(self._changed_files), {}
        if paths:
            self.indexer.update(paths)

    def set_open(self) -> None:
        if self.indexer is None:
            return
        docs = self.server.workspace.text_documents.values()  # keyed by unquoted URI: the document keeps its own
        paths = [p for p in (lsp_path(d.uri) for d in docs) if p is not None]
        self.indexer.set_open(paths)

    def stats(self) -> dict:
        out: dict[str, Any] = {"status": self.status.to_json(), "server": dict(sorted(self.counters.items()))}
        if self.completer is not None:
            out.update(self.completer.snapshot_stats())
        # The settings in force for the next request: the completer takes a change on the model thread, after
        # the requests queued before it, so its own copy may still be the previous one.
        out["settings"] = dataclasses.asdict(self.settings)
        shown, accepted = self.counters.get("shown", 0), self.counters.get("accepted", 0)
        out["acceptance_rate"] = round(accepted / shown, 4) if shown else 0.0
        return out


def _log_failure(fut: concurrent.futures.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("background task failed: %s", fut.exception())
