"""LSP <-> core conversions: positions, paths, requests and results (every `lsp_*` function lives here)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument

from kvblend.completer import Completion, CompletionRequest

MAX_DOCUMENT_CHARS = 32 << 20  # beyond this a document is not completed at all (nothing useful fits a prompt)


def lsp_offset(doc: TextDocument, position: types.Position) -> int:
    """The character offset in `doc.source` of an LSP position.

    Positions count lines from 0 and columns in the negotiated encoding's code units (UTF-16 unless the
    client chose UTF-8 or UTF-32); pygls' codec converts. A position past the document is invalid params
    (the client's view of the document is out of date); a column past the end of its line is clamped to
    the line end, as the LSP specification asks."""
    lines = doc.lines
    if position.line < 0 or position.character < 0 or position.line > len(lines):
        raise JsonRpcInvalidParams(f"position {position.line}:{position.character} outside {doc.uri} "
                                   f"({len(lines)} lines)")  # fmt: skip
    if position.line == len(lines):  # the position just after a final newline
        return len(doc.source)
    return doc.offset_at_position(position)


def lsp_path(uri: str) -> Path | None:
    """Filesystem path of a file:// URI (None for other schemes: untitled buffers, virtual documents)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    if os.name == "nt" and path.startswith("/") and len(path) > 2 and path[2] == ":":
        path = path[1:]
    return Path(path)


def lsp_relative(uri: str, root: Path | None) -> str:
    """The document's workspace-relative posix path (retrieval excludes its own chunks by this), or its
    file name when it lies outside the workspace or is not a file."""
    path = lsp_path(uri)
    if path is None:
        return uri.rsplit("/", 1)[-1] or "untitled"
    if root is not None:
        try:
            return Path(os.path.normpath(path)).relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def lsp_request(doc: TextDocument, position: types.Position, root: Path | None, trigger: str) -> CompletionRequest:
    text = doc.source
    if len(text) > MAX_DOCUMENT_CHARS:
        raise JsonRpcInvalidParams(f"{doc.uri} is too large to complete ({len(text)} characters)")
    return CompletionRequest(lsp_relative(doc.uri, root), text, lsp_offset(doc, position), doc.uri, doc.version,
                             trigger)  # fmt: skip


def lsp_trigger(kind: types.InlineCompletionTriggerKind | None) -> str:
    return "invoked" if kind == types.InlineCompletionTriggerKind.Invoked else "automatic"


def lsp_inline_items(result: Completion | None, position: types.Position) -> types.InlineCompletionList:
    if result is None or not result.text:
        return types.InlineCompletionList(items=[])
    item = types.InlineCompletionItem(insert_text=result.text, range=types.Range(position, position))
    return types.InlineCompletionList(items=[item])


def lsp_completion_items(result: Completion | None, position: types.Position) -> types.CompletionList:
    """The fallback for clients without inline completion: one item that inserts the text at the cursor."""
    if result is None or not result.text:
        return types.CompletionList(is_incomplete=True, items=[])
    first = result.text.split("\n", 1)[0].strip() or result.text.strip()
    item = types.CompletionItem(
        label=first[:80] or result.text[:80],
        kind=types.CompletionItemKind.Snippet if "\n" in result.text else types.CompletionItemKind.Text,
        detail="kvblend",
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=types.Range(position, position), new_text=result.text),
        sort_text="0",
        filter_text=first[:80],
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def lsp_change_cursor(doc: TextDocument, change) -> int | None:
    """Where the cursor probably is after an incremental change: the end of the inserted text."""
    rng = getattr(change, "range", None)
    if rng is None:
        return None
    try:
        return min(len(doc.source), doc.offset_at_position(rng.start) + len(change.text))
    except (IndexError, ValueError):
        return None
