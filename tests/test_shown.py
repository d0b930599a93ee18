"""The shown-suggestion cache (`kvblend.shown`): repeated and typed-through requests, in every line end."""

from __future__ import annotations

import pytest
from lsprotocol import types

from kvblend.shown import ShownCache
from lsp_server.convert import LspDocument, lsp_offset

SUGGESTION = "total = price * qty\n    return round(total, 2)"  # as the stop rules write it: lines end in \n


def document(nl: str) -> tuple[str, int]:
    """A document in line end `nl` and the cursor the suggestion was shown at (an empty indented line)."""
    text = nl.join(["def invoice(price, qty):", "    ", "", "", "print(invoice(2, 3))", ""])
    return text, text.index(nl + "    " + nl) + len(nl) + 4


@pytest.mark.parametrize("nl", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_typed_through_a_multiline_suggestion_in_every_line_end(nl):
    """Typing the first line of a suggestion, then Enter (the editor writes the document's line end and the
    indentation): the rest answers, in a CRLF or CR document as in an LF one."""
    text, cursor = document(nl)
    cache = ShownCache(4)
    cache.remember("a.py", text, cursor, SUGGESTION)
    assert cache.lookup("a.py", text, cursor) == (SUGGESTION, 0)  # the same request again
    for typed, rest in [
        ("total = pr", SUGGESTION[10:]),
        ("total = price * qty" + nl, "    return round(total, 2)"),
        ("total = price * qty" + nl + "    ret", "urn round(total, 2)"),
    ]:
        now = text[:cursor] + typed + text[cursor:]
        assert cache.lookup("a.py", now, cursor + len(typed)) == (rest, len(SUGGESTION) - len(rest)), typed
    # Something else typed, Enter where the suggestion goes on, or the whole suggestion typed: no hit.
    for typed in ["total = pw", "total" + nl, "total = price * qty" + nl + "    return round(total, 2)"]:
        now = text[:cursor] + typed + text[cursor:]
        assert cache.lookup("a.py", now, cursor + len(typed)) is None, typed


def test_typed_through_after_enter_through_the_servers_crlf_document():
    """The server's copy of a CRLF document, edited as an editor sends the keystrokes (Enter inserts \\r\\n), and
    the cursor converted from the LSP position: the cache answers with the rest of the suggestion."""
    text, cursor = document("\r\n")
    doc = LspDocument("file:///w/a.py", text)
    assert lsp_offset(doc, types.Position(line=1, character=4)) == cursor
    cache = ShownCache(4)
    cache.remember("a.py", doc.source, cursor, SUGGESTION)
    for line, character, inserted in [(1, 4, "total = price * qty"), (1, 23, "\r\n"), (2, 0, "    ")]:
        at = types.Position(line=line, character=character)
        doc.apply_change(types.TextDocumentContentChangePartial(range=types.Range(at, at), text=inserted))
    assert doc.source == text[:cursor] + "total = price * qty\r\n    " + text[cursor:]
    now = lsp_offset(doc, types.Position(line=2, character=4))
    assert cache.lookup("a.py", doc.source, now) == ("return round(total, 2)", 24)
