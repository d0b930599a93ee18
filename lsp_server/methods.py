"""kvblend's custom LSP methods: their names and parameter types, defined once.

Requests (client -> server):
    kvblend/stats                 {}                                  -> StatsResult (dict)
    kvblend/capsule.snapshot      {uri}                               -> capsule info {id, uri, tokens, bytes, ...}
    kvblend/capsule.restore       {id}                                -> capsule info (the next request resumes it)
    kvblend/capsule.undo          {uri}                               -> capsule info of the parent, or null
    kvblend/capsule.fork          {id, n}                             -> {branches: [branch ids]}
    kvblend/capsule.list          {uri?}                              -> [capsule info]
    kvblend/capsule.drop          {id}                                -> {dropped: bool}
    kvblend/applyAgentEdit        {edit: WorkspaceEdit, label?, approved?}
                                  -> {decision, reasons, applied}     (the ledger's gate; allowed edits are
                                                                       sent to the client as workspace/applyEdit)
Notifications (client -> server):
    kvblend/didShowCompletion     {uri, text}
    kvblend/didAcceptCompletion   {uri, text, acceptedLength?}        (acceptedLength < len(text): partial)
Notifications (server -> client):
    kvblend/status                {state, message, done?, total?, lastLatencyMs?}
        state: loading | indexing | ready | error
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pygls.exceptions import JsonRpcInvalidParams

STATS = "kvblend/stats"
DID_SHOW = "kvblend/didShowCompletion"
DID_ACCEPT = "kvblend/didAcceptCompletion"
STATUS = "kvblend/status"
CAPSULE_SNAPSHOT = "kvblend/capsule.snapshot"
CAPSULE_RESTORE = "kvblend/capsule.restore"
CAPSULE_UNDO = "kvblend/capsule.undo"
CAPSULE_FORK = "kvblend/capsule.fork"
CAPSULE_LIST = "kvblend/capsule.list"
CAPSULE_DROP = "kvblend/capsule.drop"
APPLY_AGENT_EDIT = "kvblend/applyAgentEdit"
STATES = ("loading", "indexing", "ready", "error")


@dataclasses.dataclass(frozen=True)
class ShownParams:
    uri: str
    text: str


@dataclasses.dataclass(frozen=True)
class AcceptParams:
    uri: str
    text: str
    accepted_length: int  # characters of `text` accepted (word / line accepts take part of it)

    @property
    def partial(self) -> bool:
        return self.accepted_length < len(self.text)


@dataclasses.dataclass(frozen=True)
class StatusParams:
    state: str
    message: str = ""
    done: int | None = None
    total: int | None = None
    last_latency_ms: float | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"state": self.state, "message": self.message}
        for key, value in (("done", self.done), ("total", self.total), ("lastLatencyMs", self.last_latency_ms)):
            if value is not None:
                out[key] = value
        return out


def plain(obj: Any) -> Any:
    """pygls hands custom methods' params over as nested namedtuples: back to dicts and lists."""
    if hasattr(obj, "_asdict"):
        return {k: plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def parse_shown(params: Any) -> ShownParams:
    d = _object(params, DID_SHOW)
    return ShownParams(_field(d, "uri", str, DID_SHOW), _field(d, "text", str, DID_SHOW))


def parse_accept(params: Any) -> AcceptParams:
    d = _object(params, DID_ACCEPT)
    text = _field(d, "text", str, DID_ACCEPT)
    n = d.get("acceptedLength", len(text))
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(text):
        raise JsonRpcInvalidParams(f"{DID_ACCEPT}: acceptedLength must be an integer in [0, {len(text)}], got {n!r}")
    return AcceptParams(_field(d, "uri", str, DID_ACCEPT), text, n)


def parse_fields(params: Any, method: str, **fields: type) -> dict:
    """The named fields of a custom request's params, type-checked; a field typed `type(None) | T` is
    optional."""
    d = _object(params, method)
    out = {}
    for name, kind in fields.items():
        if name not in d and isinstance(kind, tuple) and type(None) in kind:
            out[name] = None
            continue
        out[name] = _field(d, name, kind, method)
        if kind is int and isinstance(out[name], bool):
            raise JsonRpcInvalidParams(f"{method}: field {name!r} must be an integer, got {out[name]!r}")
    return out


def _object(params: Any, method: str) -> dict:
    d = plain(params)
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise JsonRpcInvalidParams(f"{method}: params must be an object, got {type(d).__name__}")
    return d


def _field(d: dict, name: str, kind, method: str):
    value = d.get(name)
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise JsonRpcInvalidParams(f"{method}: field {name!r} must be a {names}, got {value!r}")
    return value
