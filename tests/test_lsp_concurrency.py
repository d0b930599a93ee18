"""Concurrency and state of the language server: edits, settings, file-event storms, warm-ups and shutdown
racing completions and indexing.

In process (`InProcess` from test_lsp_probe.py, driven from a running event loop) with a fake completer and
indexer whose calls block on events, so that each interleaving is forced, not hoped for. Every wait has a
timeout: a deadlock fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest

from kvblend.completer import Completer
from kvblend.completion import Completion, CompletionRequest
from kvblend.settings import Settings
from kvblend.stats import Stats
from tests.test_lsp_probe import InProcess, edit

TIMEOUT = 5.0


class FakeCompleter:
    """Answers "suggestion" after `release` is set; records warm-ups and what `cancelled()` said."""

    def __init__(self) -> None:
        self.capsules = None
        self.stats = Stats()
        self.started = threading.Event()
        self.release = threading.Event()
        self.warmed: list[CompletionRequest] = []
        self.saw_cancel: bool | None = None

    def complete(self, req: CompletionRequest, cancelled) -> Completion:
        self.started.set()
        self.release.wait(TIMEOUT)
        self.saw_cancel = cancelled()
        return Completion("suggestion", "stop")  # as a request finished just before the cancel came

    def warm(self, req: CompletionRequest) -> None:
        self.warmed.append(req)

    def update_settings(self, settings: Settings) -> None:
        pass


class FakeIndexer:
    def __init__(self) -> None:
        self.updates: list[list] = []
        self.indexing = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def update(self, paths) -> None:
        self.updates.append(list(paths))

    def set_open(self, paths) -> None:
        pass

    def start(self) -> None:
        pass

    def index(self):
        self.indexing.set()
        self.release.wait(TIMEOUT)
        return type("IndexStats", (), {"files": 1, "chunks": 1})()

    def close(self) -> None:
        self.closed = True


def serving(tmp_path) -> tuple[InProcess, FakeCompleter]:
    """A server past `initialized` with the fake completer loaded (call from inside the running loop)."""
    ls = InProcess(tmp_path)
    backend, fake = ls.server.backend, FakeCompleter()
    backend.loop = asyncio.get_running_loop()
    backend.completer = fake
    backend.loaded.set_result(fake)
    return ls, fake


async def until(condition, timeout: float = TIMEOUT) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "timed out"
        await asyncio.sleep(0.005)


def inline(ls: InProcess, uri: str, msg_id: int, line: int = 0, character: int = 0) -> None:
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
              "context": {"triggerKind": 2}}  # fmt: skip
    ls.send("textDocument/inlineCompletion", params, msg_id=msg_id)


async def answer(ls: InProcess, msg_id: int) -> dict:
    await until(lambda: any(m.get("id") == msg_id for m in ls.sent))
    return next(m for m in ls.sent if m.get("id") == msg_id)


def block_worker(ls: InProcess) -> threading.Event:
    """Occupy the model thread until the returned event is set: jobs queue behind it."""
    gate = threading.Event()
    ls.server.backend.executor.submit(gate.wait, TIMEOUT)
    return gate


def test_an_edit_drops_the_completion_running_for_the_older_text(tmp_path):
    async def main():
        ls, fake = serving(tmp_path)
        uri = (tmp_path / "a.py").as_uri()
        ls.open(uri, "x = foo")
        inline(ls, uri, 5, 0, 7)
        await until(fake.started.is_set)
        ls.change(uri, edit((0, 0), (0, 0), "# moved\n"))  # no new request follows: nothing supersedes it
        fake.release.set()
        # The suggestion was for "x = foo|": shown now it would sit on the comment line the edit put there.
        assert (await answer(ls, 5))["result"]["items"] == []

    asyncio.run(main())


def test_a_request_after_the_edit_is_answered(tmp_path):
    async def main():
        ls, fake = serving(tmp_path)
        uri = (tmp_path / "a.py").as_uri()
        ls.open(uri, "x = foo")
        ls.change(uri, edit((0, 7), (0, 7), "b"))
        fake.release.set()
        inline(ls, uri, 6, 0, 8)
        assert (await answer(ls, 6))["result"]["items"][0]["insertText"] == "suggestion"

    asyncio.run(main())


def test_a_storm_of_file_events_is_one_index_update(tmp_path):
    async def main():
        ls, fake = serving(tmp_path)
        backend, indexer = ls.server.backend, FakeIndexer()
        backend.indexer = indexer
        gate = block_worker(ls)  # a completion running while the events arrive
        uris = [(tmp_path / f"m{i}.py").as_uri() for i in range(300)]
        for uri in uris:
            ls.send("textDocument/didSave", {"textDocument": {"uri": uri}})
        ls.send("workspace/didChangeWatchedFiles", {"changes": [{"uri": u, "type": 2} for u in uris[:50]]})
        # One job waits on the model thread, not 301 ahead of the next completion.
        assert backend.executor._work_queue.qsize() == 1
        gate.set()
        fake.release.set()
        inline(ls, uris[0], 7)  # not open: answered with an error, after the update
        await answer(ls, 7)
        assert len(indexer.updates) == 1
        assert sorted(p.name for p in indexer.updates[0]) == sorted(f"m{i}.py" for i in range(300))
        ls.send("textDocument/didSave", {"textDocument": {"uri": uris[0]}})  # after the job ran: a new one
        await until(lambda: len(indexer.updates) == 2)
        assert [p.name for p in indexer.updates[1]] == ["m0.py"]

    asyncio.run(main())


def test_a_warm_up_queued_before_a_request_does_not_run(tmp_path):
    async def main():
        ls, fake = serving(tmp_path)
        backend = ls.server.backend
        uri = (tmp_path / "a.py").as_uri()
        ls.open(uri, "x = foo")
        gate = block_worker(ls)  # e.g. an index update: the warm-up waits its turn
        backend._warm_now(uri, 7, backend._latest.get(uri))  # the idle timer fired
        inline(ls, uri, 8, 0, 7)
        await until(lambda: backend._latest.get(uri) is not None)  # the request is the latest now
        gate.set()
        fake.release.set()
        assert (await answer(ls, 8))["result"]["items"][0]["insertText"] == "suggestion"
        assert fake.warmed == []  # it ran, and the request waited for a blend of text it replaces

    asyncio.run(main())


def test_shutdown_cancels_the_running_completion(tmp_path):
    async def main():
        ls, fake = serving(tmp_path)
        uri = (tmp_path / "a.py").as_uri()
        ls.open(uri, "x = foo")
        inline(ls, uri, 9, 0, 7)
        await until(fake.started.is_set)
        ls.send("shutdown", None, msg_id=10)
        assert (await answer(ls, 10))["result"] is None
        fake.release.set()
        await answer(ls, 9)
        # The real completer stops at its next decode step once cancelled() is true; it used to decode to its
        # budget while the process waited for the model thread to exit.
        assert fake.saw_cancel is True

    asyncio.run(main())


def test_shutdown_while_indexing_starts_no_watcher(tmp_path, monkeypatch):
    import indexer.watcher

    started = []

    class Watcher:
        def __init__(self, idx) -> None:
            pass

        def start(self):
            started.append(self)
            return self

    monkeypatch.setattr(indexer.watcher, "Watcher", Watcher)
    ls = InProcess(tmp_path)
    backend, fake = ls.server.backend, FakeIndexer()
    backend.indexer, backend.options = fake, dataclasses.replace(backend.options, watch=True)
    posted = []
    backend._post = lambda fn, *args: posted.append(fn.__name__)
    thread = threading.Thread(target=backend._index)
    thread.start()
    assert fake.indexing.wait(TIMEOUT)
    ls.send("shutdown", None, msg_id=2)
    assert fake.closed
    fake.release.set()  # index() returns once the closed queue stops it
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert started == [] and backend.watcher is None  # a watcher used to start on the closed indexer
    assert posted == []  # nor "ready" reported after shutdown


# -- the completer's settings -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    from blend.loader import load_model

    return load_model(None)


TEXT = "for i in range("


def test_a_settings_change_is_not_answered_from_the_old_result_cache(lm):
    c = Completer(lm, Settings())
    req = CompletionRequest("a.py", TEXT, len(TEXT))
    first = c.complete(req)
    assert first.source == "model" and first.text, first  # the bundled model closes the bracket
    assert c.complete(req).source == "cache"
    c.update_settings(dataclasses.replace(c.settings, max_line_tokens=1, temperature=0.5))
    again = c.complete(req)
    assert again.source == "model"  # was "cache": the suggestion made under the old settings


def test_the_same_settings_again_keep_the_sessions(lm):
    c = Completer(lm, Settings())
    c.complete(CompletionRequest("a.py", TEXT, len(TEXT)))
    c.update_settings(dataclasses.replace(c.settings))  # a client resends its whole configuration
    nxt = TEXT + "1"
    r = c.complete(CompletionRequest("a.py", nxt, len(nxt)))
    assert r.kv_path == "session", r  # was a cold build: every configuration message dropped every session
