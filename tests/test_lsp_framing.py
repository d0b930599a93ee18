"""Malformed input below the LSP layer: the framing reader (`lsp_server/transport.py`) on its own, then the real
`kvblend serve` subprocess fed raw bytes over its pipes (a typed client cannot send broken frames)."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lsp_server import transport
from lsp_server.transport import MAX_CONTENT_LENGTH, FrameReader


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class ChunkSource:
    """A `transport.Source` handing out fixed pieces (each in reads of at most n bytes), then the end of the
    stream; records the largest buffer the reader held."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [memoryview(p) for p in pieces]  # views: cutting a 64 MiB piece copies nothing
        self.reader: FrameReader | None = None
        self.max_buffer = 0

    async def read(self, n: int) -> bytes:
        if self.reader is not None:
            self.max_buffer = max(self.max_buffer, len(self.reader._buf))
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        if len(piece) > n:
            self.pieces[0] = piece[n:]
            return bytes(piece[:n])
        self.pieces.pop(0)
        return bytes(piece)


def bodies(pieces: list[bytes]) -> tuple[list[bytes], ChunkSource]:
    source = ChunkSource(pieces)
    reader = source.reader = FrameReader(source)

    async def drain() -> list[bytes]:
        out = []
        while (body := await reader.next_body()) is not None:
            out.append(body)
        return out

    return asyncio.run(drain()), source


GOOD = b'{"jsonrpc": "2.0", "id": 1, "method": "kvblend/stats"}'


@pytest.mark.parametrize(
    "bad",
    [
        b"Content-Length: abc\r\n\r\n{}",
        b"Content-Length: -5\r\n\r\n{}",
        b"Content-Length: 99999999999\r\n\r\n{}",  # pygls allocated this at once: MemoryError
        b"Content-Length: 1073741824\r\n\r\n{}",  # pygls waited for it forever
        b"X-Junk: 1\r\n\r\n",
        b"Content-Length: 5\r\nContent-Length: 9\r\n",  # no blank line before the next frame
        b'Content-Length: 5\r\n{"bad header line": 1}\r\n\r\n',
        b"junk" * 5000,  # no header in it at all
        b"Content-Length: " + b"9" * 10000 + b"\r\n\r\n{}",  # a header line longer than MAX_HEADER_LINE
    ],
)
def test_reader_resynchronises_on_the_next_header(bad):
    got, _ = bodies([frame(b"{}"), bad, frame(GOOD), frame(b"[]")])
    assert got == [b"{}", GOOD, b"[]"]


def test_reader_finds_headers_split_across_reads():
    data = b"Content-Length: abc\r\n\r\n{}" + frame(GOOD) + b"content-length: 2\r\n\r\n{}"  # header names: any case
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    got, _ = bodies(pieces)
    assert got == [GOOD, b"{}"]


def test_reader_drops_an_oversized_body_in_pieces():
    n = MAX_CONTENT_LENGTH + 1
    huge = b'{"text": "' + b"x" * (n - 12) + b'"}'
    assert len(huge) == n
    got, source = bodies([b"Content-Length: %d\r\n\r\n" % n, huge, frame(GOOD)])
    assert got == [GOOD]
    assert source.max_buffer <= 2 * transport.CHUNK  # never the whole body at once


def test_reader_reads_a_body_at_the_limit():
    body = b'"' + b"y" * (MAX_CONTENT_LENGTH - 2) + b'"'
    got, _ = bodies([frame(body), frame(GOOD)])
    assert len(got) == 2 and len(got[0]) == MAX_CONTENT_LENGTH and got[1] == GOOD


def test_reader_stops_at_the_end_of_the_stream():
    assert bodies([b"Content-Length: 10\r\n\r\n{}"])[0] == []
    assert bodies([b"Content-Length: 10\r\n"])[0] == []
    assert bodies([])[0] == []


def test_invalid_message():
    assert transport.invalid_message({"jsonrpc": "2.0", "id": 1, "method": "kvblend/stats"}) is None
    assert transport.invalid_message({"jsonrpc": "2.0", "id": "a", "result": None}) is None
    # The client could not read one of our messages: its error response has a null id, and is no bad request.
    assert transport.invalid_message({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}) is None
    assert "batches" in transport.invalid_message([{"jsonrpc": "2.0", "method": "exit"}])
    assert "object" in transport.invalid_message(5)
    assert '"jsonrpc"' in transport.invalid_message({"jsonrpc": "1.0", "method": "exit"})
    assert '"id"' in transport.invalid_message({"jsonrpc": "2.0", "id": True, "method": "exit"})
    assert '"id"' in transport.invalid_message({"jsonrpc": "2.0", "id": None, "method": "exit"})
    assert '"method"' in transport.invalid_message({"jsonrpc": "2.0", "method": 5})
    assert "neither" in transport.invalid_message({"jsonrpc": "2.0"})


# -- the real server over raw pipes ----------------------------------------------------------------------------


class RawClient:
    """`kvblend serve --no-index` with raw framing: responses by id, and the notifications the server sent."""

    def __init__(self, root: Path, log_file: Path) -> None:
        cmd = [sys.executable, "-m", "kvblend", "serve", "--no-index", "--log-file", str(log_file)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.root, self.log_file = root, log_file
        self.responses: queue.Queue = queue.Queue()
        self.notes: list[dict] = []
        self.apply_edit_answer: object = None  # what the client answers workspace/applyEdit with
        self._next_id = 1
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line:
                self.responses.put(None)
                return
            msg = json.loads(out.read(length))
            if "method" in msg and "id" in msg:  # a request from the server
                result = self.apply_edit_answer if msg["method"] == "workspace/applyEdit" else None
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})
            elif "method" in msg:
                self.notes.append(msg)
            else:
                self.responses.put(msg)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg: dict) -> None:
        self.write(frame(json.dumps(msg).encode()))

    def response(self, timeout: float = 15.0) -> dict:
        """The next response the server sends."""
        msg = self.responses.get(timeout=timeout)
        assert msg is not None, f"the server exited (rc {self.proc.poll()})"
        return msg

    def request(self, method: str, params=None, timeout: float = 15.0) -> dict:
        msg_id = self._next_id
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        msg = self.response(timeout)
        assert msg.get("id") == msg_id, msg
        return msg

    def initialize(self) -> None:
        uri = self.root.as_uri()
        init = {"processId": None, "rootUri": uri, "capabilities": {}, "workspaceFolders": [{"uri": uri, "name": "ws"}]}
        assert "result" in self.request("initialize", init)

    def errors_shown(self) -> list[str]:
        return [n["params"]["message"] for n in self.notes if n["method"] == "window/showMessage"
                and n["params"]["type"] == 1]  # fmt: skip

    def close(self) -> None:
        try:
            self.request("shutdown", timeout=10)
            self.send({"jsonrpc": "2.0", "method": "exit"})
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "app.py").write_text("x = 1\n")
    client = RawClient(root, tmp_path / "server.log")
    client.initialize()
    yield client
    client.close()


def assert_serving(server: RawClient) -> None:
    assert server.request("kvblend/stats", {})["result"]["status"]["state"] == "loading"
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("header", "logged"),
    [
        (b"abc", "invalid Content-Length 'abc'"),
        (b"-5", "invalid Content-Length '-5'"),
        (b"99999999999", "refused a 99999999999-byte message"),
        (b"1073741824", "refused a 1073741824-byte message"),
    ],
)
def test_bad_content_length_is_logged_and_the_server_keeps_answering(server, header, logged):
    server.write(b"Content-Length: " + header + b"\r\n\r\n{}")
    time.sleep(0.2)  # the valid request comes as a separate write, as an editor's would
    for _ in range(3):
        assert_serving(server)
    assert logged in server.log_file.read_text()


def test_honest_oversized_message_is_skipped_whole(server):
    n = MAX_CONTENT_LENGTH + 1
    server.write(b"Content-Length: %d\r\n\r\n" % n + b'"' + b"z" * (n - 2) + b'"')
    assert_serving(server)
    assert f"refused a {n}-byte message (over {MAX_CONTENT_LENGTH} bytes): dropped {n} bytes" in (
        server.log_file.read_text()
    )


def test_unparsable_body_gets_a_parse_error(server):
    for body in [b"{ not json at all ", b"\xff\xfe\xfd", b'{"jsonrpc": "2.0", "text": "\xe9t\xe9"}']:  # not UTF-8
        server.write(frame(body))
        error = server.response()
        assert error["id"] is None and error["error"]["code"] == -32700, (body, error)
        assert_serving(server)
    assert server.errors_shown() == []


def test_declared_length_running_into_the_next_message(server):
    # 60 bytes declared, 2 sent: the body read takes the start of the next request, which is read again.
    server.write(b"Content-Length: 60\r\n\r\n{}" + frame(b'{"jsonrpc": "2.0", "id": 99, "method": "kvblend/stats"}'))
    assert server.response()["error"]["code"] == -32700
    assert server.response()["id"] == 99
    assert_serving(server)


def test_json_that_is_no_message_gets_invalid_request(server):
    cases = [
        (b"[]", None),  # a batch
        (b'"str"', None),
        (b'{"id": 7, "method": "kvblend/stats"}', 7),  # no "jsonrpc"
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "kvblend/stats"}', None),
    ]
    for body, msg_id in cases:
        server.write(frame(body))
        error = server.response()
        assert error["id"] == msg_id and error["error"]["code"] == -32600, (body, error)
        assert_serving(server)
    assert server.errors_shown() == []


def test_did_change_for_an_unopened_document_is_ignored(server):
    change = {"textDocument": {"uri": "file:///not/open.py", "version": 2}, "contentChanges": [{"text": "abc"}]}
    server.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": change})
    # A malformed notification is logged, not shown either.
    server.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": 5}})
    assert_serving(server)  # answered after both notifications were handled
    assert server.errors_shown() == []
    assert "didChange for file:///not/open.py, which is not open: ignored" in server.log_file.read_text()


def test_apply_agent_edit_answered_when_the_client_answers_null(server):
    server.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    t0 = time.monotonic()
    while not any(n["method"] == "kvblend/status" and n["params"]["state"] == "ready" for n in server.notes):
        assert time.monotonic() - t0 < 60, "the server did not become ready"
        time.sleep(0.05)
    uri = (server.root / "app.py").as_uri()
    doc = {"uri": uri, "languageId": "python", "version": 1, "text": "x = 1\n"}
    server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": doc}})
    edit = {"changes": {uri: [{"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                               "newText": "# hi\n"}]}}  # fmt: skip
    server.apply_edit_answer = None  # a client that answers workspace/applyEdit with null
    result = server.request("kvblend/applyAgentEdit", {"edit": edit})["result"]
    assert result["decision"] == "allow" and result["applied"] is False, result
    assert "workspace/applyEdit" in result["failureReason"], result
    # A proper answer still applies.
    server.apply_edit_answer = {"applied": True}
    assert server.request("kvblend/applyAgentEdit", {"edit": edit})["result"]["applied"] is True
    assert server.errors_shown() == []
