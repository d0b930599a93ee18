"""LSP <-> core conversions: positions, paths, requests and results (every `lsp_*` function lives here)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import cattrs
from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument
from pygls.workspace.position_codec import PositionCodec

from kvblend.completion import Completion, CompletionRequest
from kvblend.lines import split_ends

log = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 32 << 20  # beyond this a document is not completed at all (nothing useful fits a prompt)


def lsp_lines(text: str) -> list[str]:
    r"""The document's lines as LSP counts them, each with its line end: "a\r\nb\fc\rd" -> ["a\r\n",
    "b\fc\r", "d"]. A text ending in a line end has no empty last line here (the position after it is the
    line `len(lines)`, column 0)."""
    parts, ends = split_ends(text)
    return [p + e for p, e in zip(parts, ends, strict=False)] + ([parts[-1]] if parts[-1] else [])


def lsp_offset(doc: TextDocument, position: types.Position) -> int:
    r"""The character offset in `doc.source` of an LSP position.

    Positions count lines from 0, split at \n, \r\n and \r only, and columns in the negotiated
    encoding's code units (UTF-16 unless the client chose UTF-8 or UTF-32). A position past the document is
    invalid params (the client's view of the document is out of date); a column past the end of its line is
    the line end (before its line break), as the LSP specification asks. `position` is not modified."""
    split = split_ends(doc.source)
    n_lines = len(split[1]) + bool(split[0][-1])  # as lsp_lines counts them
    if position.line < 0 or position.character < 0 or position.line > n_lines:
        raise JsonRpcInvalidParams(f"position {position.line}:{position.character} outside {doc.uri} "
                                   f"({n_lines} lines)")  # fmt: skip
    return _clamped_offset(split, position, doc.position_codec)


def _clamped_offset(split: tuple[list[str], list[str]], position: types.Position, codec: PositionCodec) -> int:
    """`lsp_offset` without the checks (`split`: `split_ends` of the text, not a string per line: a keystroke
    converts positions at least twice, and that took 2.6x pygls' time on a 1 MB file): a line past the last one
    is the end of the text, a column past a line's end that end (before its line end)."""
    parts, ends = split
    line = min(position.line, len(parts) - 1)
    start = sum(map(len, parts[:line])) + sum(map(len, ends[:line]))
    if line < position.line:  # past the last line
        return start + len(parts[line])
    return start + _column(parts[line], max(position.character, 0), codec)


def _column(text: str, units: int, codec: PositionCodec) -> int:
    """The index in `text` after `units` of the client's code units, at most len(text); a unit count inside
    a character (half of a surrogate pair) counts the whole character."""
    if text.isascii() or codec.encoding == types.PositionEncodingKind.Utf32:  # one unit per character
        return min(units, len(text))
    n = 0
    for i, ch in enumerate(text):
        if n >= units:
            return i
        n += codec.client_num_units(ch)
    return len(text)


class LspDocument(TextDocument):
    r"""pygls' TextDocument with LSP's lines and columns (the server's copy of every open document).

    pygls splits lines with str.splitlines, also at \f, \v, \x1c-\x1e, \x85, \u2028 and \u2029, so
    that in a file holding one (a form feed between sections) every later position lands a line off and
    incremental edits corrupt the copy; it clamps a column past the line end to the character before the
    end (of a last line without a line break) or past the line break (`len + 1`), and writes the clamped
    column into the request's Position."""

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(lsp_lines(self.source))

    def offset_at_position(self, client_position: types.Position) -> int:
        return _clamped_offset(split_ends(self.source), client_position, self.position_codec)

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        source, split = self.source, split_ends(self.source)
        a = _clamped_offset(split, change.range.start, self.position_codec)
        b = _clamped_offset(split, change.range.end, self.position_codec)
        if b < a:  # a client bug: pygls would keep the text between them twice
            log.warning("didChange of %s with a reversed range %s: applied to the text between its ends",
                        self.uri, change.range)  # fmt: skip
            a, b = b, a
        self._source = source[:a] + change.text + source[b:]


def lsp_document(workspace, uri: str) -> LspDocument | None:
    """The open document `uri`, or None. pygls keys documents by their unquoted URI, so a client's
    percent-encoded one (`my%20file.py`, `c%3A/...`) is looked up as such."""
    return workspace.text_documents.get(unquote(uri))


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
    """One item inserting the completion at the cursor, with an explicit empty range there. LSP 3.18 gives an item
    without a range no meaning, and VS Code then replaces the word at the cursor up to the line's end (its
    `getDefaultRange`): mid-word it would not show the item, mid-line accepting it would delete the rest of the
    line. (Neovim 0.12 draws an item with a range as an overlay over the text after the cursor: editors/nvim drops
    the empty range on its side.)"""
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


def lsp_workspace_edit(raw, method: str) -> types.WorkspaceEdit:
    """An agent's `edit` (plain JSON) as a WorkspaceEdit, or InvalidParams naming the offending field. Strings
    must be strings: lsprotocol's converter turns `"newText": 5` into "5" and a numeric URI into a path."""
    try:
        return _strict_converter().structure(raw, types.WorkspaceEdit)
    except Exception as e:
        why = "; ".join(cattrs.transform_error(e, path="edit")) if isinstance(e, cattrs.BaseValidationError) else e
        raise JsonRpcInvalidParams(f"{method}: 'edit' is not a WorkspaceEdit: {why}") from None


@functools.cache
def _strict_converter() -> cattrs.Converter:
    """lsprotocol's converter, but a str field takes only a str (a fresh one: hooks are fixed once used)."""

    def strict_str(value, _) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r:.40}")
        return value

    conv = get_converter()
    conv.register_structure_hook(str, strict_str)
    return conv


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
        doc = lsp_document(workspace, uri)
        if doc is not None:
            return doc.source
        path = lsp_path(uri)
        try:
            return path.read_text(encoding="utf-8") if path is not None else ""
        except FileNotFoundError:
            raise JsonRpcInvalidParams(f"applyAgentEdit: {uri} does not exist (use a CreateFile operation)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise JsonRpcInvalidParams(f"applyAgentEdit: cannot read {uri}: {e}") from None

    def applied(uri: str, before: str, edits) -> str:
        """`before` with `edits` (one TextEdit list: ranges in `before`, applied together) applied."""
        doc = LspDocument(uri, before, position_codec=workspace.position_codec)
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
        return after

    changes: list = []
    made: dict[str, int] = {}  # uri -> index in `changes` of its create, edit or rename (by the new uri), while
    # nothing else touched it

    def edited(uri: str, edits) -> None:
        """Text edits of `uri`. Edits after its CreateFile or earlier edits in the same WorkspaceEdit apply to
        the text those left (the client applies them in order): one change, from the file before the whole
        edit to the file after it, so the ledger judges what is written."""
        i = made.get(uri)
        if i is None:
            before = old_text(uri)
            made[uri] = len(changes)
            changes.append(FileChange.build("edit", rel(uri), before, applied(uri, before, edits)))
            return
        c = changes[i]
        changes[i] = FileChange.build(c.op, c.path, c.old_text, applied(uri, c.new_text, edits), new_path=c.new_path)

    for uri, edits in (edit.changes or {}).items():
        edited(uri, edits)
    for op in edit.document_changes or []:
        if isinstance(op, types.TextDocumentEdit):
            edited(op.text_document.uri, op.edits)
            continue
        for uri in (getattr(op, "uri", None), getattr(op, "old_uri", None), getattr(op, "new_uri", None)):
            made.pop(uri, None)  # a file operation: later text edits of these are changes of their own
        if isinstance(op, types.CreateFile):
            made[op.uri] = len(changes)
            changes.append(FileChange.build("create", rel(op.uri), None, ""))
        elif isinstance(op, types.DeleteFile):
            changes.append(FileChange.build("delete", rel(op.uri), old_text(op.uri), None))
        elif isinstance(op, types.RenameFile):
            text = old_text(op.old_uri)
            made[op.new_uri] = len(changes)  # text edits of the new name continue the rename, as after a create
            changes.append(FileChange.build("rename", rel(op.old_uri), text, text, new_path=rel(op.new_uri)))
    if not changes:
        raise JsonRpcInvalidParams("applyAgentEdit: the edit changes nothing")
    return changes
