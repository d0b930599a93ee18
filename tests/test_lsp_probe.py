"""Protocol edge cases of the language server: positions and line ends (`convert.lsp_offset`, `LspDocument`),
percent-encoded URIs, and the initialize / shutdown / exit lifecycle.

Positions and documents are checked in process (`build_server` without a transport, messages handed to its
protocol); the lifecycle against the real `kvblend serve --no-index` subprocess over its pipes."""

from __future__ import annotations

import json
import queue
import re
import time
from pathlib import Path

import pytest
from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument
from pygls.workspace.position_codec import PositionCodec

from kvblend.completion import Completion
from lsp_server.backend import ServerOptions
from lsp_server.convert import lsp_inline_items, lsp_lines, lsp_offset, lsp_workspace_edit
from lsp_server.server import build_server
from tests.test_lsp_framing import RawClient


def offset(text: str, line: int, character: int, encoding=types.PositionEncodingKind.Utf16) -> int:
    doc = TextDocument("file:///t.py", text, position_codec=PositionCodec(encoding))
    return lsp_offset(doc, types.Position(line=line, character=character))


# -- positions ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sep",
    ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"],  # str.splitlines splits here, LSP does not
)
def test_offset_splits_lines_at_lsp_line_ends_only(sep):
    text = f"a = 1{sep}\nb = 2\nc = 3\n"
    assert offset(text, 2, 1) == text.index("c") + 1
    assert offset(text, 0, 6) == text.index("\n")  # the separator is a character of line 0
    assert lsp_lines(text) == [f"a = 1{sep}\n", "b = 2\n", "c = 3\n"]


def test_offset_line_ends_crlf_and_lone_cr():
    text = "ab\r\ncd\ref\ngh"
    assert lsp_lines(text) == ["ab\r\n", "cd\r", "ef\n", "gh"]
    assert [offset(text, line, 1) for line in range(4)] == [1, 5, 8, 11]
    assert offset(text, 4, 0) == len(text)  # the line after the last: the end (the client may be one line ahead)
    with pytest.raises(Exception, match="outside"):
        offset(text, 5, 0)


@pytest.mark.parametrize(
    ("text", "line", "character", "expected"),
    [
        ("x = foo", 0, 100, 7),  # the last line without a line end: pygls put the cursor before the "o"
        ("x = foo", 0, 8, 7),
        ("abc\ndef\n", 0, 4, 3),  # len + 1: pygls put it after the "\n", at the start of the next line
        ("abc\r\ndef\r\n", 0, 4, 3),  # pygls: between "\r" and "\n"
        ("abc\r\ndef\r\n", 0, 5, 3),
        ("abc\rdef", 0, 4, 3),
        ("abc\n\n", 1, 5, 4),
    ],
)
def test_column_past_the_line_end_is_the_line_end(text, line, character, expected):
    position = types.Position(line=line, character=character)
    doc = TextDocument("file:///t.py", text)
    assert lsp_offset(doc, position) == expected
    assert position == types.Position(line=line, character=character)  # pygls wrote its clamped column into it


def test_offset_counts_the_negotiated_code_units():
    text = 's = "😋" + "日本" + "e\u0301" + x\n'  # an astral character, CJK, a combining mark
    x = text.index("x")
    utf16 = x + 1  # the emoji is two UTF-16 units
    utf8 = len(text[:x].encode("utf-8"))
    assert offset(text, 0, utf16) == x
    assert offset(text, 0, utf8, types.PositionEncodingKind.Utf8) == x
    assert offset(text, 0, x, types.PositionEncodingKind.Utf32) == x
    assert offset(text, 0, text.index("😋") + 1) == text.index("😋") + 1  # inside the surrogate pair: after it


def test_inline_item_has_an_explicit_empty_range_at_the_cursor():
    """Not left out although Neovim 0.12 draws an item with a range as an overlay (editors/nvim drops the empty
    range): LSP gives an item without one no meaning, and VS Code then replaces the word at the cursor up to the
    line's end, so mid-word the item is not shown (the word is no prefix of it) and mid-line accepting it deletes
    the rest of the line."""
    at = types.Position(line=5, character=29)
    items = get_converter().unstructure(lsp_inline_items(Completion("otenuse_length", "eos"), at))["items"]
    assert items == [{"insertText": "otenuse_length", "range": {"start": {"line": 5, "character": 29},
                                                                "end": {"line": 5, "character": 29}}}]  # fmt: skip
    assert get_converter().unstructure(lsp_inline_items(None, at)) == {"items": []}


# -- documents in the server -------------------------------------------------------------------------------------


class InProcess:
    """`build_server` without a transport: messages go in through its protocol, what it sends is captured."""

    def __init__(self, root: Path, encodings: list[str] | None = None, initialize: bool = True) -> None:
        self.server = build_server(ServerOptions(index=False, watch=False))
        self.sent: list[dict] = []
        self.server.protocol.set_writer(self, include_headers=False)
        if initialize:
            self.initialize(root, encodings)

    def initialize(self, root: Path, encodings: list[str] | None = None, msg_id: int = 1) -> None:
        general = types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None
        folder = types.WorkspaceFolder(uri=root.as_uri(), name="ws")
        caps = types.ClientCapabilities(general=general)
        init = types.InitializeParams(capabilities=caps, workspace_folders=[folder])
        self.send("initialize", self.server.protocol._converter.unstructure(init), msg_id=msg_id)

    def write(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    def close(self) -> None:
        pass

    def send(self, method: str, params=None, msg_id: int | None = None) -> None:
        msg = {"jsonrpc": "2.0", "method": method, "params": params} | ({} if msg_id is None else {"id": msg_id})
        protocol = self.server.protocol
        protocol.handle_message(protocol.structure_message(msg))

    def open(self, uri: str, text: str) -> None:
        doc = {"uri": uri, "languageId": "python", "version": 1, "text": text}
        self.send("textDocument/didOpen", {"textDocument": doc})

    def change(self, uri: str, *changes: dict, version: int = 2) -> None:
        self.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                             "contentChanges": list(changes)})  # fmt: skip

    def text(self, uri: str) -> str:
        return self.server.backend.document(uri).source


def edit(start: tuple[int, int], end: tuple[int, int], text: str) -> dict:
    return {"range": {"start": {"line": start[0], "character": start[1]},
                      "end": {"line": end[0], "character": end[1]}}, "text": text}  # fmt: skip


def test_incremental_changes_after_a_form_feed(tmp_path):
    ls = InProcess(tmp_path)
    uri = (tmp_path / "a.py").as_uri()
    ls.open(uri, "import os\n\f\ndef f():\n    return o\n")
    ls.change(uri, edit((3, 12), (3, 12), "s.sep"))  # pygls wrote it one line down, after the end of the text
    assert ls.text(uri) == "import os\n\f\ndef f():\n    return os.sep\n"
    ls.change(uri, edit((1, 0), (2, 0), ""), version=3)  # the form feed's whole line
    assert ls.text(uri) == "import os\ndef f():\n    return os.sep\n"


def test_incremental_change_edge_ranges(tmp_path):
    ls = InProcess(tmp_path)
    uri = (tmp_path / "a.py").as_uri()
    ls.open(uri, "x = foo")
    ls.change(uri, edit((0, 50), (0, 50), "()"))  # a column past the end of the last line: appended there
    assert ls.text(uri) == "x = foo()"
    ls.change(uri, edit((0, 9), (9, 0), "\n"), version=3)  # a range ending past the document
    ls.change(uri, edit((1, 0), (1, 0), "y = 2\r\n"), version=4)  # zero-length, at the line after the last
    assert ls.text(uri) == "x = foo()\ny = 2\r\n"
    ls.change(uri, edit((1, 6), (1, 6), "  # two"), version=5)  # len + 1 on a CRLF line: before the "\r\n"
    assert ls.text(uri) == "x = foo()\ny = 2  # two\r\n"
    ls.change(uri, edit((0, 7), (0, 4), "bar"), version=6)  # a reversed range: the text between its ends
    assert ls.text(uri) == "x = bar()\ny = 2  # two\r\n"
    # One notification, applied in order: a full-text change between two edits.
    ls.change(uri, edit((0, 0), (0, 0), "dropped"), {"text": 's = "😋"\n'}, edit((0, 6), (0, 6), "!"), version=7)
    assert ls.text(uri) == 's = "😋!"\n'  # the emoji's two UTF-16 units counted


def test_utf8_client_edits_in_bytes(tmp_path):
    ls = InProcess(tmp_path, encodings=["utf-8"])
    assert ls.sent[0]["result"]["capabilities"]["positionEncoding"] == "utf-8"
    uri = (tmp_path / "a.py").as_uri()
    ls.open(uri, 'name = "日本"\nx = 1')
    ls.change(uri, edit((0, 14), (0, 14), "語"), edit((1, 40), (1, 40), "0"))  # 8 + 2 * 3 bytes; past the end
    assert ls.text(uri) == 'name = "日本語"\nx = 10'


def test_percent_encoded_and_other_uris_are_found(tmp_path):
    ls = InProcess(tmp_path)
    uris = [
        (tmp_path / "my file.py").as_uri(),  # file:///.../my%20file.py, as VS Code sends it
        "file:///c%3A/Users/me/proj/a.py",  # a Windows drive, colon encoded
        "untitled:Untitled-1",
    ]
    for uri in uris:
        ls.open(uri, "x = 1\n")
        ls.change(uri, edit((0, 5), (0, 5), "0"))
        assert ls.text(uri) == "x = 10\n"  # pygls' workspace holds it under the unquoted URI: "unknown document"
    assert "%20" in uris[0]
    ls.send("textDocument/didClose", {"textDocument": {"uri": uris[0]}})
    with pytest.raises(Exception, match="unknown document"):
        ls.text(uris[0])


# -- the lifecycle ------------------------------------------------------------------------------------------------


def response(ls: InProcess, msg_id: int) -> dict:
    return next(m for m in ls.sent if m.get("id") == msg_id)


def test_before_initialize_requests_get_server_not_initialized(tmp_path):
    ls = InProcess(tmp_path, initialize=False)
    ls.send("kvblend/stats", {}, msg_id=7)
    assert response(ls, 7)["error"]["code"] == -32002  # pygls: -32603 with the RuntimeError's traceback
    ls.open((tmp_path / "a.py").as_uri(), "x\n")  # dropped: pygls showed the user "Error in server"
    assert [m for m in ls.sent if m.get("method") == "window/showMessage"] == []
    ls.initialize(tmp_path)
    assert "capabilities" in response(ls, 1)["result"]


def test_second_initialize_keeps_the_open_documents(tmp_path):
    ls = InProcess(tmp_path)
    uri = (tmp_path / "a.py").as_uri()
    ls.open(uri, "x = 1\n")
    ls.initialize(tmp_path, msg_id=2)
    assert response(ls, 2)["error"]["code"] == -32600
    assert ls.text(uri) == "x = 1\n"  # pygls made a new workspace without it


def test_requests_after_shutdown_are_answered(tmp_path):
    ls = InProcess(tmp_path)
    ls.send("shutdown", None, msg_id=2)
    assert response(ls, 2)["result"] is None
    ls.send("kvblend/stats", {}, msg_id=3)
    error = response(ls, 3)["error"]  # pygls sent nothing: the client waited forever
    assert error["code"] == -32600 and "after shutdown" in error["message"], error


# -- the lifecycle against the real server ------------------------------------------------------------------------


def start(tmp_path: Path) -> RawClient:
    root = tmp_path / "ws"
    root.mkdir()
    return RawClient(root, tmp_path / "server.log")


def no_response(client: RawClient, timeout: float = 0.5) -> bool:
    try:
        client.responses.get(timeout=timeout)
    except queue.Empty:
        return True
    return False


def test_lifecycle_over_stdio(tmp_path):
    client = start(tmp_path)
    try:
        # Before initialize: a request gets ServerNotInitialized, a notification is dropped without a word.
        error = client.request("kvblend/stats", {})["error"]
        assert error["code"] == -32002, error
        doc = {"uri": (client.root / "a.py").as_uri(), "languageId": "python", "version": 1, "text": "x\n"}
        client.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": doc}})
        client.initialize()
        assert client.errors_shown() == []  # pygls showed "Error in server" for the didOpen
        # initialize once only: a second one would have replaced the workspace and its open documents.
        assert client.request("initialize", {"processId": None, "capabilities": {}})["error"]["code"] == -32600
        assert client.request("kvblend/stats", {})["result"]["status"]["state"] == "loading"
        assert "result" in client.request("shutdown")
        # After shutdown a request is answered with InvalidRequest (pygls never answered it).
        error = client.request("kvblend/stats", {}, timeout=5)["error"]
        assert error["code"] == -32600 and "after shutdown" in error["message"], error
        client.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": doc}})
        assert no_response(client)
        client.send({"jsonrpc": "2.0", "method": "exit"})
        assert client.proc.wait(timeout=20) == 0
    finally:
        client.close()


def test_exit_without_shutdown_exits_with_1(tmp_path):
    client = start(tmp_path)
    try:
        client.initialize()
        client.send({"jsonrpc": "2.0", "method": "exit"})
        t0 = time.monotonic()
        assert client.proc.wait(timeout=20) == 1  # the specification's code; the server used to exit with 0
        assert time.monotonic() - t0 < 20
    finally:
        client.close()


def _text_edit(new_text) -> dict:
    return {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "newText": new_text}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"changes": {"file:///a.py": [_text_edit(5)]}}, "edit.changes['file:///a.py'][0].new_text"),
        ({"documentChanges": [{"textDocument": {"uri": 7, "version": 1}, "edits": []}]}, "text_document.uri"),
        ({"changes": 5}, "edit.changes"),
    ],
)
def test_an_agent_edit_with_a_non_string_is_refused_not_coerced(raw, where):
    with pytest.raises(JsonRpcInvalidParams, match=re.escape(where)):  # lsprotocol alone made 5 into "5"
        lsp_workspace_edit(raw, "kvblend/applyAgentEdit")


def test_a_well_formed_agent_edit_converts():
    raw = {
        "documentChanges": [
            {
                "textDocument": {"uri": "file:///a.py", "version": None},
                "edits": [_text_edit("x") | {"annotationId": "n"}],
            },
            {"kind": "rename", "oldUri": "file:///b.py", "newUri": "file:///c.py"},
        ],
        "changeAnnotations": {"n": {"label": "agent"}},
    }
    edit = lsp_workspace_edit(raw, "kvblend/applyAgentEdit")
    assert edit.document_changes[0].edits[0].new_text == "x"
    assert isinstance(edit.document_changes[1], types.RenameFile) and edit.change_annotations["n"].label == "agent"


def test_did_close_cancels_the_documents_warm_up_and_drops_its_running_request(tmp_path):
    ls = InProcess(tmp_path)
    uri = (tmp_path / "a.py").as_uri()
    ls.open(uri, "x = 1\n")
    backend = ls.server.backend

    class Timer:  # what loop.call_later returned for the pending warm-up
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    timer = backend._warm[uri] = Timer()
    backend._latest[uri] = 7  # a completion request in flight: it polls whether it is still the latest
    ls.send("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert timer.cancelled and uri not in backend._warm and uri not in backend._latest  # nothing kept


def _range_edit(start: tuple[int, int], end: tuple[int, int], text: str) -> dict:
    return {"range": {"start": {"line": start[0], "character": start[1]},
                      "end": {"line": end[0], "character": end[1]}}, "newText": text}  # fmt: skip


def test_an_agents_create_then_edit_and_successive_edits_are_one_change_each(tmp_path):
    from lsp_server.convert import lsp_file_changes

    ls = InProcess(tmp_path)
    (tmp_path / "a.py").write_text("x = 1\ny = 2\n")
    a, new = (tmp_path / "a.py").as_uri(), (tmp_path / "new.py").as_uri()
    raw = {
        "documentChanges": [
            {"kind": "create", "uri": new},  # the LSP way to write a new file: create it, then edit it
            {"textDocument": {"uri": new, "version": None}, "edits": [_range_edit((0, 0), (0, 0), "def f():\n")]},
            {"textDocument": {"uri": new, "version": None}, "edits": [_range_edit((1, 0), (1, 0), "    pass\n")]},
            {"textDocument": {"uri": a, "version": None}, "edits": [_range_edit((0, 4), (0, 5), "10")]},
            # ranges of a second edit of a.py are in the text the first one left: "x = 10" is 6 characters
            {"textDocument": {"uri": a, "version": None}, "edits": [_range_edit((0, 6), (0, 6), "0")]},
        ]
    }
    edit = lsp_workspace_edit(raw, "kvblend/applyAgentEdit")
    changes = lsp_file_changes(edit, ls.server.workspace, tmp_path)
    assert [(c.op, c.path, c.old_text, c.new_text) for c in changes] == [
        ("create", "new.py", None, "def f():\n    pass\n"),  # used to fail: "new.py does not exist"
        ("edit", "a.py", "x = 1\ny = 2\n", "x = 100\ny = 2\n"),  # used to be two changes, each of the file on disk
    ]
    assert changes[0].lines_changed == 2 and changes[1].lines_changed == 2


def test_an_agents_rename_then_edit_of_the_new_name_is_one_change_the_ledger_allows(tmp_path):
    from ledger import Gate
    from lsp_server.convert import lsp_file_changes

    ls = InProcess(tmp_path)
    (tmp_path / "a.py").write_text("x = 1\n")
    a, b = (tmp_path / "a.py").as_uri(), (tmp_path / "b.py").as_uri()
    raw = {
        "documentChanges": [
            {"kind": "rename", "oldUri": a, "newUri": b},
            {"textDocument": {"uri": b, "version": None}, "edits": [_range_edit((0, 4), (0, 5), "2")]},
            {"textDocument": {"uri": b, "version": None}, "edits": [_range_edit((1, 0), (1, 0), "y = 3\n")]},
        ]
    }
    edit = lsp_workspace_edit(raw, "kvblend/applyAgentEdit")
    changes = lsp_file_changes(edit, ls.server.workspace, tmp_path)  # used to fail: "b.py does not exist"
    assert [(c.op, c.path, c.new_path, c.old_text, c.new_text, c.lines_changed) for c in changes] == [
        ("rename", "a.py", "b.py", "x = 1\n", "x = 2\ny = 3\n", 3)
    ]
    assert Gate(tmp_path).check(changes).decision == "allow"
    (tmp_path / ".kvblend").mkdir(exist_ok=True)
    for paths in ('"b.py"', '"a.py"'):  # a deny rule on either name still applies
        (tmp_path / ".kvblend" / "policy.toml").write_text(
            f'[[rule]]\nname = "no"\ndecision = "deny"\npaths = [{paths}]\n'
        )
        d = Gate(tmp_path).check(changes)
        assert d.decision == "deny" and [r.rule for r in d.reasons] == ["no"], d.reasons
