"""kvblend's reader loop for `kvblend serve` (stdio, and `--tcp`): Content-Length framed JSON-RPC that
survives a broken client.

pygls' own loop (`pygls.io_.run_async`) believes every header. A `Content-Length` that is not a number leaves
it waiting for a blank line that already went by, so the next message's header is read as part of a body and
the server never answers again; a huge one is allocated in one piece (MemoryError ends the server) or waited
for forever; a body that is not JSON is shown to the user as a server error and gets no response.
`FrameReader` instead:

- drops a frame whose `Content-Length` is not a decimal integer (also a negative one) or whose header lines
  are malformed, with a log line, and resynchronises on the next `Content-Length:` header, also one glued to
  the end of the dropped body;
- refuses a frame over `MAX_CONTENT_LENGTH`: its body is read and dropped in `CHUNK` pieces (bounded memory),
  and a `Content-Length:` met inside it ends the skip early (a client that lied about the length is back in
  sync at its next message);
- reads header lines of at most `MAX_HEADER_LINE` bytes.

`serve` answers a body that is not UTF-8 JSON with a Parse error (-32700, id null), one that is JSON but no
JSON-RPC message with Invalid Request (-32600), logs both and keeps serving. `start_io` / `start_tcp` are
pygls' server start-up around this loop; both return when the client is gone (`exit`, or the end of its stream),
and the server decides the exit code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, BinaryIO, Protocol

from pygls.exceptions import JsonRpcException, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.io_ import StdoutWriter
from pygls.server import JsonRPCServer

from lsp_server.protocol import KvblendProtocol

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 << 20  # the largest body read: documents past 32 M characters are not completed anyway
CHUNK = 64 << 10  # bytes read at a time (a pipe's buffer); also the piece size a refused body is dropped in
MAX_HEADER_LINE = 8 << 10  # LSP sends two short headers; a longer "line" is junk
_MARKER = b"content-length:"  # where a frame starts (header names are case-insensitive)
_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")


class Source(Protocol):
    """Bytes from the client: `read(n)` returns what has arrived, 1 to n bytes, and b"" at the end."""

    async def read(self, n: int) -> bytes: ...


class StdinSource:
    """A blocking binary stream (stdin) as a `Source`, read in a worker thread."""

    def __init__(self, stream: BinaryIO, executor: Executor | None = None) -> None:
        self._read = getattr(stream, "read1", stream.read)  # read1: what is there, without waiting for n bytes
        self._executor = executor

    async def read(self, n: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, n)


class FrameReader:
    """The bodies of Content-Length framed messages from a `Source` (asyncio.StreamReader is one); malformed
    and oversized frames are logged and skipped."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._buf = bytearray()

    async def next_body(self) -> bytes | None:
        """The next well-framed message's body, or None at the end of the stream."""
        while True:
            dropped = await self._seek_header()
            if dropped is None:
                return None
            if dropped:
                log.warning("dropped %d bytes that were no message; resynchronised on a Content-Length header", dropped)
            length = await self._header_block()
            if length is None:
                continue
            if length < 0:
                return None
            if length > MAX_CONTENT_LENGTH:
                skipped = await self._skip(length)
                log.error("refused a %d-byte message (over %d bytes): dropped %d bytes of it",
                          length, MAX_CONTENT_LENGTH, skipped)  # fmt: skip
                continue
            while len(self._buf) < length:
                if not await self._fill():
                    return None
            return self._take(length)

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the stream (a body that ran into the next message's header)."""
        self._buf[:0] = data

    async def _header_block(self) -> int | None:
        """Read the header lines up to the blank line (the stream is at `Content-Length:`): the body's length;
        None for a malformed block (logged; what follows its bad line is scanned again); -1 at the end."""
        length = None
        while True:
            line = await self._line()
            if line is None:
                return -1
            if line in (b"\r\n", b"\n"):
                return length
            name, sep, value = line.partition(b":")
            if not (line.endswith(b"\n") and sep and _HEADER_NAME.fullmatch(name)):
                log.warning("malformed header line %r: frame dropped", line[:80])
                self.unread(line[1:])  # a header glued to junk on this line is found again
                return None
            if name.lower() != b"content-length":
                continue  # Content-Type: UTF-8 is the only encoding LSP uses
            if length is not None:  # a new frame began before this one's blank line
                log.warning("header block without its blank line: frame dropped")
                self.unread(line)
                return None
            value = value.strip()
            if not value.isdigit():
                log.warning("invalid Content-Length %r: frame dropped", value[:40].decode("latin-1"))
                return None
            length = int(value)

    async def _line(self) -> bytes | None:
        """The next line with its newline, or `MAX_HEADER_LINE` bytes without one; None at the end."""
        while True:
            end = self._buf.find(b"\n", 0, MAX_HEADER_LINE)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= MAX_HEADER_LINE:
                return self._take(MAX_HEADER_LINE)
            if not await self._fill():
                return None

    async def _seek_header(self) -> int | None:
        """Drop bytes up to the next `Content-Length:` (any case): how many, or None at the end."""
        dropped = 0
        while True:
            if self._buf[: len(_MARKER)].lower() == _MARKER:
                return dropped
            at = self._buf.lower().find(_MARKER)
            if at >= 0:
                del self._buf[:at]
                return dropped + at
            n = max(0, len(self._buf) - (len(_MARKER) - 1))  # keep a tail that may begin a split marker
            del self._buf[:n]
            dropped += n
            if not await self._fill():
                return None

    async def _skip(self, n: int) -> int:
        """Drop up to n bytes of a refused body, a piece at a time, stopping early at a `Content-Length:`
        (the length was a lie and the next message has begun): how many were dropped."""
        dropped = 0
        while dropped < n:
            window = self._buf[: n - dropped]
            at = window.lower().find(_MARKER)
            if at >= 0:
                del self._buf[:at]
                return dropped + at
            if len(window) == n - dropped:
                del self._buf[: len(window)]
                return n
            drop = max(0, len(window) - (len(_MARKER) - 1))  # keep a tail that may begin a split marker
            del self._buf[:drop]
            dropped += drop
            if not await self._fill():
                break
        return dropped

    async def _fill(self) -> bool:
        data = await self._source.read(CHUNK)
        self._buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def invalid_message(data: Any) -> str | None:
    """Why a parsed body is no JSON-RPC 2.0 message, or None when it is one (an error response may have a null
    id: the client could not read the id of our message)."""
    if isinstance(data, list):
        return "batches are not supported"
    if not isinstance(data, dict):
        return f"a message must be a JSON object, got {type(data).__name__}"
    if data.get("jsonrpc") != "2.0":
        return f'"jsonrpc" must be "2.0", got {data.get("jsonrpc")!r}'
    if "id" in data and _message_id(data) is None and not (data["id"] is None and "error" in data):
        return f'"id" must be a string or an integer, got {data["id"]!r}'
    if "method" in data and not isinstance(data["method"], str):
        return f'"method" must be a string, got {data["method"]!r}'
    if "method" not in data and "id" not in data:
        return "neither a request, a notification nor a response"
    return None


def _message_id(data: Any) -> int | str | None:
    msg_id = data.get("id") if isinstance(data, dict) else None
    return msg_id if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool) else None


async def serve(
    stop_event: threading.Event,
    reader: FrameReader,
    protocol: KvblendProtocol,
    error_handler: Callable[[Exception, type], Any] | None = None,
) -> None:
    """Hand every message from `reader` to `protocol` until the stream ends or `stop_event` is set."""
    while not stop_event.is_set():
        body = await reader.next_body()
        if body is None:
            break
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
            log.warning("parse error in a %d-byte message: %s", len(body), e)
            protocol.send_error(None, JsonRpcParseError(f"Parse error: {e}"))
            at = body.lower().find(_MARKER, 1)
            if at > 0:  # the declared length was too long and ran into the next message: read that one again
                reader.unread(body[at:])
            continue
        problem = invalid_message(data)
        if problem is not None:
            log.warning("invalid request: %s", problem)
            protocol.send_error(_message_id(data), JsonRpcInvalidRequest(f"Invalid Request: {problem}"))
            continue
        try:
            protocol.handle_message(protocol.structure_message(data))
        except Exception as e:
            log.exception("unable to handle a %s message", data.get("method", "response"))
            if error_handler is not None:
                error_handler(e, JsonRpcException)


def start_io(server: JsonRPCServer, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """Serve over stdin/stdout until the client exits or closes the pipe."""
    server._stop_event = stop_event = threading.Event()  # pygls' attribute: its `shutdown` sets the event
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    reader = FrameReader(StdinSource(stdin or sys.stdin.buffer, server.thread_pool))
    try:
        asyncio.run(serve(stop_event, reader, server.protocol, server.report_server_error))
    except BrokenPipeError:
        log.error("the client closed the connection: shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


class ListenError(OSError):
    """`start_tcp` cannot listen on its address: the port is taken, not permitted, or no address of this machine."""


def start_tcp(server: JsonRPCServer, host: str, port: int) -> None:
    """Serve one client over TCP (for debugging) with the loop stdio runs. The server ends with that client (its
    `exit`, or the connection closed or broken), as a stdio server ends with its pipe; once it connected the port
    is closed, so a second client is refused. Raises ListenError when host:port cannot be listened on."""
    server._stop_event = stop_event = threading.Event()

    async def main() -> None:
        ended, taken = asyncio.Event(), False

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal taken
            if taken:  # accepted in the same turn as the first client, before the port was closed
                log.warning("a second client connected: refused (one client per server)")
                writer.close()
                return
            taken = True
            listener.close()
            server.protocol.set_writer(writer)
            try:
                await serve(stop_event, FrameReader(reader), server.protocol, server.report_server_error)
            except OSError as e:  # the client reset the connection
                log.warning("the client connection broke: %s", e)
            except SystemExit:  # pygls' `exit` handler ends the loop so; the exit code is the server's to decide
                pass
            finally:
                writer.close()
                ended.set()

        try:
            listener = await asyncio.start_server(connection, host, port)
        except OSError as e:
            why = os.strerror(e.errno).lower() if e.errno and e.errno > 0 else str(e)
            raise ListenError(f"cannot listen on {host}:{port}: {why}") from None
        server._server = listener  # pygls' `shutdown` closes it
        log.info("serving on %s", ", ".join(str(s.getsockname()) for s in listener.sockets))
        await ended.wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
