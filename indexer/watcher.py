"""A thin watchdog observer: collect changed paths, wait `debounce_s` after the last event (but no longer than
`max_delay_s` after the first one), call `Indexer.update(paths)` (or `refresh_commits` when HEAD or a ref moved).
All the logic lives in the indexer."""

from __future__ import annotations

import logging
import os
import threading
import time

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from indexer.indexer import Indexer

log = logging.getLogger(__name__)

# A flush comes at most this long after the first event it holds, however the events keep coming: without a
# bound, a file written more often than the debounce (a build's log, a test run's output in the workspace)
# put off every update for as long as it was written.
MAX_DELAY_S = 5.0


class Watcher(FileSystemEventHandler):
    def __init__(self, indexer: Indexer, debounce_s: float | None = None, max_delay_s: float = MAX_DELAY_S) -> None:
        self.indexer = indexer
        self.root = str(indexer.cfg.root)
        self.debounce_s = indexer.cfg.debounce_s if debounce_s is None else debounce_s
        self.max_delay_s = max(max_delay_s, self.debounce_s)
        self._pending: set[str] = set()
        self._commits = False
        self._lock = threading.Lock()
        # One timer per batch of events, not one thread per event (a checkout of a thousand files started and
        # cancelled a thousand timers): it wakes when the batch may be due and flushes, or sleeps on.
        self._timer: threading.Timer | None = None
        self._first = self._last = 0.0  # monotonic times of the batch's first and last event
        self._observer = None
        self.flushes = 0  # debounced updates run (tests and stats)

    # -- watchdog callbacks (observer thread) -------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a child came, went or was renamed: its own event names it (this one would rewalk the directory)
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        for p in paths:
            p = os.fsdecode(p)
            if not p:
                continue
            rel = os.path.relpath(p, self.root).replace(os.sep, "/")
            if rel.startswith(".git/"):
                if rel == ".git/HEAD" or rel.startswith(".git/refs/") or rel == ".git/packed-refs":
                    self._schedule(commits=True)
                continue
            if _outside(rel) or _below(rel, ".kvblend/cache"):
                continue
            self._schedule(path=p)

    def _schedule(self, path: str | None = None, commits: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if path is not None:
                self._pending.add(path)
            self._commits |= commits
            self._last = now
            if self._timer is None:
                self._first = now
                self._arm(self.debounce_s)

    def _arm(self, delay: float) -> None:
        """Wake `_due` after `delay` seconds (the caller holds the lock)."""
        timer = threading.Timer(delay, self._due)
        timer.args = (timer,)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _due(self, timer: threading.Timer) -> None:
        """Flush once the events have been quiet for `debounce_s`, or the batch is `max_delay_s` old."""
        with self._lock:
            if self._timer is not timer:  # stopped, or flushed by hand since
                return
            when = min(self._last + self.debounce_s, self._first + self.max_delay_s)
            wait = when - time.monotonic()
            if wait > 0:
                self._arm(wait)
                return
        self.flush()

    def flush(self) -> None:
        """Run the update for everything collected so far (the debounce timer calls this)."""
        with self._lock:
            paths, self._pending = sorted(self._pending), set()
            commits, self._commits = self._commits, False
            self._timer = None
        try:
            if paths:
                result = self.indexer.update(paths)
                log.info("updated %d paths: %d chunks queued", len(paths), result.queued)
            if commits:
                self.indexer.refresh_commits()
        except Exception:  # a failed update must not kill the observer; the next event retries
            log.exception("index update failed")
        self.flushes += 1

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Watcher:
        self._observer = Observer()
        self._observer.schedule(self, self.root, recursive=True)
        self._observer.start()
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _outside(rel: str) -> bool:
    return rel == ".." or rel.startswith("../")  # not "..name", a file name like any other


def _below(rel: str, directory: str) -> bool:
    return rel == directory or rel.startswith(directory + "/")
