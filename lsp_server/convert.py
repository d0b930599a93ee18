"""LSP <-> core conversions: positions, paths, requests and results (every `lsp_*` function lives here)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument

from kvblend.completion import Completion, CompletionRequest

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
        return min(len(doc.source), lsp_offset(doc, rng.start) + len(change.text))
    except (IndexError, ValueError, JsonRpcInvalidParams):
        return None


def lsp_file_changes(edit: types.WorkspaceEdit, workspace, root: Path | None) -> list:
    """The ledger's view of a WorkspaceEdit: one FileChange per file, with whole old and new texts.

    Text edits apply to the server's copy of an open document, else to the file on disk. Paths inside the
    workspace become relative; any other path is passed on as it is, for the gate to refuse."""
    from ledger import FileChange

    def rel(uri: str) -> str:
        path = lsp_path(uri)
        if path is None:
            raise JsonRpcInvalidParams(f"applyAgentEdit: not a file URI: {uri}")
        if root is not None:
            try:
                return Path(os.path.normpath(path)).relative_to(root).as_posix()
            except ValueError:
                pass
        return str(path)

    def old_text(uri: str) -> str:
        doc = workspace.text_documents.get(uri)
        if doc is not None:
            return doc.source
        path = lsp_path(uri)
        try:
            return path.read_text(encoding="utf-8") if path is not None else ""
        except FileNotFoundError:
            raise JsonRpcInvalidParams(f"applyAgentEdit: {uri} does not exist (use a CreateFile operation)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise JsonRpcInvalidParams(f"applyAgentEdit: cannot read {uri}: {e}") from None

    def edited(uri: str, edits) -> FileChange:
        before = old_text(uri)
        doc = TextDocument(uri, before, position_codec=workspace.position_codec)
        spans = []
        for e in edits:
            a, b = lsp_offset(doc, e.range.start), lsp_offset(doc, e.range.end)
            if b < a:
                raise JsonRpcInvalidParams(f"applyAgentEdit: reversed range in an edit of {uri}")
            spans.append((a, b, e.new_text))
        spans.sort(key=lambda s: (s[0], s[1]))
        for (_, b1, _), (a2, _, _) in zip(spans, spans[1:], strict=False):
            if a2 < b1:
                raise JsonRpcInvalidParams(f"applyAgentEdit: overlapping edits in {uri}")
        after = before
        for a, b, text in reversed(spans):
            after = after[:a] + text + after[b:]
        return FileChange.build("edit", rel(uri), before, after)

    changes: list = []
    for uri, edits in (edit.changes or {}).items():
        changes.append(edited(uri, edits))
    for op in edit.document_changes or []:
        if isinstance(op, types.TextDocumentEdit):
            changes.append(edited(op.text_document.uri, op.edits))
        elif isinstance(op, types.CreateFile):
            changes.append(FileChange.build("create", rel(op.uri), None, ""))
        elif isinstance(op, types.DeleteFile):
            changes.append(FileChange.build("delete", rel(op.uri), old_text(op.uri), None))
        elif isinstance(op, types.RenameFile):
            text = old_text(op.old_uri)
            changes.append(FileChange.build("rename", rel(op.old_uri), text, text, new_path=rel(op.new_uri)))
    if not changes:
        raise JsonRpcInvalidParams("applyAgentEdit: the edit changes nothing")
    return changes
