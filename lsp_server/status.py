"""Status and progress reporting of the language server: `kvblend/status` notifications, `$/progress` for
indexing, messages to the user, and the hop from worker threads to the event loop.

A mixin of `Backend`, which provides `server` (the pygls server) and `loop` (the running event loop, None
before `start`) and calls `_init_status` from its constructor.
"""

from __future__ import annotations

import logging
import time

from lsprotocol import types

from lsp_server import methods

log = logging.getLogger(__name__)


class StatusReporting:
    def _init_status(self) -> None:
        self.status = methods.StatusParams("loading", "starting")
        self._progress_token = "kvblend-indexing"
        self._last_progress = 0.0
        self._progress_active = False
        self._indexed = False  # the first index finished: later progress (edits, the watcher) ends in "ready"

    def _supports_progress(self) -> bool:
        window = self.server.client_capabilities.window
        return bool(window and window.work_done_progress)

    async def _begin_progress(self) -> None:
        self.send_status(methods.StatusParams("indexing", "indexing workspace", 0, 0))
        if not self._supports_progress():
            return
        try:
            await self.server.work_done_progress.create_async(self._progress_token)
        except Exception:  # the client refused: status notifications still report progress
            log.info("client refused the progress token")
            return
        self._progress_active = True
        self.server.work_done_progress.begin(
            self._progress_token, types.WorkDoneProgressBegin(title="kvblend: indexing", percentage=0)
        )

    def _on_progress(self, p) -> None:  # precompute thread
        now = time.monotonic()
        if now - self._last_progress < 0.2 and p.done < p.total:
            return
        self._last_progress = now
        self._post(self._report_progress, p.done, p.total)

    def _ready(self, message: str) -> None:
        self._indexed = True
        self.send_status(methods.StatusParams("ready", message))

    def _report_progress(self, done: int, total: int) -> None:
        if self._indexed and done >= total:  # an update after the first index is done
            self.send_status(methods.StatusParams("ready", f"index up to date ({done} chunks recomputed)"))
            return
        self.send_status(methods.StatusParams("indexing", f"{done}/{total} chunks", done, total))
        if self._progress_active:
            pct = int(100 * done / total) if total else 100
            self.server.work_done_progress.report(
                self._progress_token, types.WorkDoneProgressReport(message=f"{done}/{total} chunks", percentage=pct)
            )

    def _end_progress(self, message: str) -> None:
        if self._progress_active:
            self._progress_active = False
            self.server.work_done_progress.end(self._progress_token, types.WorkDoneProgressEnd(message=message))

    def _watch_disk(self, disk) -> None:
        """Tell the user when the disk tier cannot be written (read-only workspace, a file in the cache directory's
        place, a full disk): once per outage, from whichever thread found it; the index and completions go on
        from memory."""
        if disk is None:
            return

        def trouble(message: str) -> None:
            self._post(self.show, types.MessageType.Warning, f"kvblend: {message}; the index is kept in memory")

        disk.on_write_error = trouble
        if disk.write_error is not None:  # found while the store was made, before it could tell anyone
            trouble(f"disk cache {disk.dir} cannot be written ({disk.write_error})")

    def send_status(self, status: methods.StatusParams) -> None:
        self.status = status
        self.server.protocol.notify(methods.STATUS, status.to_json())

    def show(self, kind: types.MessageType, message: str) -> None:
        self.server.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def _post(self, fn, *args) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)
