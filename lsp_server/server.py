"""The kvblend language server: typed, decorated handlers only (state and work live in `backend.py`,
conversions in `convert.py`, custom method types in `methods.py`, the reader loop in `transport.py`)."""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from kvblend import __version__
from lsp_server import methods, transport
from lsp_server.backend import Backend, ServerOptions
from lsp_server.convert import (
    lsp_change_cursor,
    lsp_completion_items,
    lsp_document,
    lsp_inline_items,
    lsp_trigger,
)
from lsp_server.protocol import KvblendProtocol

log = logging.getLogger(__name__)


class KvblendServer(LanguageServer):
    def __init__(self, options: ServerOptions | None = None) -> None:
        super().__init__(
            "kvblend", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=KvblendProtocol,
        )  # fmt: skip
        self.backend = Backend(self, options or ServerOptions())

    @property
    def exit_code(self) -> int:
        """The process's exit code once the client is gone: 0 after `shutdown`, else 1: an `exit` without
        `shutdown` before it (the specification's code), or a client gone without either (its pipe or connection
        closed or broken: what vscode-languageserver's servers do too)."""
        return 0 if self.protocol._shutdown else 1

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        transport.start_io(self, stdin, stdout)  # kvblend's reader loop in place of pygls' (transport.py)
        self._end()

    def start_tcp(self, host: str, port: int) -> None:
        """One client over TCP; raises transport.ListenError when host:port cannot be listened on."""
        transport.start_tcp(self, host, port)
        self._end()

    def _end(self) -> None:
        """Exit with `exit_code` (pygls' sys.exit on `exit` ends the transport's loop and stops there)."""
        if self.exit_code:
            log.warning("the session ended without a shutdown request: exit code %d", self.exit_code)
            raise SystemExit(self.exit_code)


def build_server(options: ServerOptions | None = None) -> KvblendServer:
    server = KvblendServer(options)

    @server.feature(types.INITIALIZE)
    def initialize(ls: KvblendServer, params: types.InitializeParams) -> None:
        for warning in ls.backend.initialize(params):
            ls.backend.show(types.MessageType.Warning, f"kvblend: {warning}")

    @server.feature(types.INITIALIZED)
    async def initialized(ls: KvblendServer, params: types.InitializedParams) -> None:
        await ls.backend.start()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: KvblendServer, params: None) -> None:
        ls.backend.shutdown()

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: KvblendServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        uri, pos = params.text_document.uri, params.position
        result = await ls.backend.complete(uri, pos, lsp_trigger(params.context.trigger_kind))
        return lsp_inline_items(result, pos)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: KvblendServer, params: types.CompletionParams) -> types.CompletionList:
        uri, pos = params.text_document.uri, params.position
        result = await ls.backend.complete(uri, pos, "invoked")
        return lsp_completion_items(result, pos)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: KvblendServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.backend.set_open()

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: KvblendServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = lsp_document(ls.workspace, uri)
        if doc is None:
            return
        ls.backend.changed(uri)
        if params.content_changes:
            ls.backend.schedule_warm(uri, lsp_change_cursor(doc, params.content_changes[-1]))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: KvblendServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.backend.closed(params.text_document.uri)
        ls.backend.set_open()

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: KvblendServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.backend.files_changed([params.text_document.uri])

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched_files(ls: KvblendServer, params: types.DidChangeWatchedFilesParams) -> None:
        ls.backend.files_changed([c.uri for c in params.changes])

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: KvblendServer, params: types.DidChangeConfigurationParams) -> None:
        ls.backend.change_settings(params.settings)

    @server.feature(methods.STATS)
    def stats(ls: KvblendServer, params: Any) -> dict:
        return ls.backend.stats()

    @server.feature(methods.DID_SHOW)
    def did_show(ls: KvblendServer, params: Any) -> None:
        methods.parse_shown(params)
        ls.backend.counters["shown"] += 1

    @server.feature(methods.DID_ACCEPT)
    def did_accept(ls: KvblendServer, params: Any) -> None:
        p = methods.parse_accept(params)
        ls.backend.counters["accepted"] += 1
        ls.backend.counters["accepted_partial"] += p.partial
        ls.backend.counters["accepted_chars"] += p.accepted_length

    @server.feature(methods.CAPSULE_SNAPSHOT)
    async def capsule_snapshot(ls: KvblendServer, params: Any) -> dict:
        p = methods.parse_fields(params, methods.CAPSULE_SNAPSHOT, uri=str)
        return await ls.backend.capsule(methods.CAPSULE_SNAPSHOT, p)

    @server.feature(methods.CAPSULE_RESTORE)
    async def capsule_restore(ls: KvblendServer, params: Any) -> dict:
        p = methods.parse_fields(params, methods.CAPSULE_RESTORE, id=str)
        return await ls.backend.capsule(methods.CAPSULE_RESTORE, p)

    @server.feature(methods.CAPSULE_UNDO)
    async def capsule_undo(ls: KvblendServer, params: Any) -> dict | None:
        p = methods.parse_fields(params, methods.CAPSULE_UNDO, uri=str)
        return await ls.backend.capsule(methods.CAPSULE_UNDO, p)

    @server.feature(methods.CAPSULE_FORK)
    async def capsule_fork(ls: KvblendServer, params: Any) -> dict:
        p = methods.parse_fields(params, methods.CAPSULE_FORK, id=str, n=int)
        return await ls.backend.capsule(methods.CAPSULE_FORK, p)

    @server.feature(methods.CAPSULE_LIST)
    async def capsule_list(ls: KvblendServer, params: Any) -> list:
        p = methods.parse_fields(params, methods.CAPSULE_LIST, uri=(str, type(None)))
        return await ls.backend.capsule(methods.CAPSULE_LIST, p)

    @server.feature(methods.CAPSULE_DROP)
    async def capsule_drop(ls: KvblendServer, params: Any) -> dict:
        p = methods.parse_fields(params, methods.CAPSULE_DROP, id=str)
        return await ls.backend.capsule(methods.CAPSULE_DROP, p)

    @server.feature(methods.APPLY_AGENT_EDIT)
    async def apply_agent_edit(ls: KvblendServer, params: Any) -> dict:
        return await ls.backend.apply_agent_edit(methods.plain(params) or {})

    return server
