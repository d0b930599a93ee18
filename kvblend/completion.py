"""A completion request and its result: what the completer, the language server, the CLI and the eval share."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    path: str  # workspace-relative posix path of the document (an outside file: its name)
    text: str  # the document's current text
    cursor: int  # character offset of the cursor in `text`
    uri: str = ""
    version: int | None = None
    trigger: str = "automatic"  # automatic | invoked


@dataclasses.dataclass
class Completion:
    text: str  # what to insert at the cursor ("" for nothing)
    stop_reason: str  # eos | stop | max_tokens | time | cancelled | cache | typed_through | skipped
    source: str = "model"  # model | cache | typed_through | none
    multiline: bool = False
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    context: list[str] = dataclasses.field(default_factory=list)  # chunks used, "path:start-end"
    tokens_prefilled: int = 0  # tokens run through the model for this request (blend: those recomputed)
    tokens_reused: int = 0  # tokens whose KV came from a cache (session, chunk store)
    kv_path: str = ""  # session | blend | naive | full | prefix | none
    first_token: int = -1  # the first token the model sampled (a stop token included); -1 when none ran

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
