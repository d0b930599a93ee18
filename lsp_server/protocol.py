"""The JSON-RPC protocol with two changes to pygls':

- a request whose params do not match its method's type gets an InvalidParams error response (pygls raises
  while decoding such a message, before any handler exists to answer it, so the client would wait forever);
- kvblend's own methods (`kvblend/...`) get their params as plain JSON (dicts and lists): pygls would turn
  them into namedtuples, which mangle keys that are not identifiers (the URIs of a WorkspaceEdit's changes).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol

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
            raise

    def handle_message(self, message):
        if isinstance(message, _Answered):
            return
        super().handle_message(message)
