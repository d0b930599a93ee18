"""The JSON-RPC protocol with these changes to pygls':

- a request whose params do not match its method's type gets an InvalidParams error response (pygls raises
  while decoding such a message, before any handler exists to answer it, so the client would wait forever);
  such a notification is logged and ignored (pygls would show the user "Error in server");
- a client's response that does not match its request's result type (`null` for workspace/applyEdit) fails
  the request waiting for it (pygls would leave it waiting forever);
- `textDocument/didChange` for a document that is not open is logged and ignored (pygls raises KeyError);
- open documents are `convert.LspDocument`s: LSP's line ends and column clamping (pygls' TextDocument splits
  lines at form feeds and other Unicode line separators too, and clamps a column past a line's end wrongly);
- the lifecycle the specification asks for (pygls checks none of it): a request before `initialize` gets
  ServerNotInitialized (-32002; pygls answered an internal error with a traceback), a notification then is
  dropped (pygls showed the user "Error in server"); a second `initialize` and a request after `shutdown`
  get InvalidRequest (pygls re-created the workspace, losing the open documents; it left a request after
  `shutdown` unanswered, the client waiting forever);
- kvblend's own methods (`kvblend/...`) get their params as plain JSON (dicts and lists): pygls would turn
  them into namedtuples, which mangle keys that are not identifiers (the URIs of a WorkspaceEdit's changes);
- `send_error` answers with `"id": null` when a message's id is unknown (transport.py: parse errors).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any
from urllib.parse import unquote

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidRequest, JsonRpcServerNotInitialized
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCRequest
from pygls.protocol.language_server import lsp_method

from lsp_server.convert import LspDocument

log = logging.getLogger(__name__)


class _Answered:
    """A message already answered with an error while it was decoded."""


@attrs.define
class RawRequest:
    id: Any
    method: str
    jsonrpc: str
    params: Any = None


@attrs.define
class RawNotification:
    method: str
    jsonrpc: str
    params: Any = None


class KvblendProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]):
        method = data.get("method") if "jsonrpc" in data else None
        if isinstance(method, str) and method.startswith("kvblend/"):
            if "id" in data:
                return RawRequest(data["id"], method, data["jsonrpc"], data.get("params"))
            return RawNotification(method, data["jsonrpc"], data.get("params"))
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data:
                log.warning("malformed %s request %r: %s", data["method"], data["id"], exc)
                exc.message = f"invalid params for {data['method']}"
                self._send_response(data["id"], error=exc.to_response_error())
                return _Answered()
            if "method" in data:
                log.warning("malformed %s notification ignored: %s", data["method"], exc.__cause__ or exc)
                return _Answered()
            if "id" in data and "error" not in data:
                result = repr(data.get("result"))[:200]
                log.warning("the client's response to %r does not match its result type: %s", data["id"], result)
                error = JsonRpcInternalError(f"invalid response from the client: {result}")
                return types.ResponseErrorMessage(id=data["id"], error=error.to_response_error())
            raise

    def handle_message(self, message):
        if isinstance(message, _Answered) or self._refused(message):
            return
        super().handle_message(message)

    def _refused(self, message) -> bool:
        """Refuse what the lifecycle does not allow now (`exit` always is): a request gets its error response,
        a notification is dropped. Responses to the server's own requests pass."""
        method = getattr(message, "method", None)
        if method is None or method == types.EXIT:
            return False
        if self._workspace is None and method != types.INITIALIZE:  # initialize creates the workspace
            error, why = JsonRpcServerNotInitialized(f"{method} before initialize"), "before initialize"
        elif self._workspace is not None and method == types.INITIALIZE:
            error, why = JsonRpcInvalidRequest("initialize was already sent"), "a second time"
        elif self._shutdown:
            error, why = JsonRpcInvalidRequest(f"{method} after shutdown"), "after shutdown"
        else:
            return False
        log.warning("%s %s: refused", method, why)
        if isinstance(message, RPCRequest):
            self._send_response(message.id, error=error.to_response_error())
        return True

    def send_error(self, msg_id: int | str | None, error: JsonRpcException) -> None:
        """An error response; `msg_id` None is sent as `"id": null` (pygls' message type would leave it out)."""
        error_json = {"code": error.code, "message": error.message}
        self._send_data({"jsonrpc": self.VERSION, "id": msg_id, "error": error_json})

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Generator:
        """pygls' didOpen with kvblend's document class (a second didOpen replaces the document, as pygls')."""
        item = params.text_document
        self.workspace.text_documents[unquote(item.uri)] = LspDocument(  # the workspace's own key
            item.uri, item.text, item.version, item.language_id, position_codec=self.workspace.position_codec
        )
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Generator:
        uri = params.text_document.uri
        if unquote(uri) not in self.workspace.text_documents:  # the workspace's own key
            log.warning("didChange for %s, which is not open: ignored", uri)
            return
        yield from super().lsp_text_document__did_change(params)
