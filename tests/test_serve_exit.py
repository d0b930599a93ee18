"""How `kvblend serve` ends, over stdio and `--tcp` alike (the real subprocess, `--no-index`, no model loaded): exit
code 0 after `shutdown`, else 1 (an `exit` without `shutdown`, the specification's code, or a client gone without
either); a `--tcp` port already taken is one line on stderr and exit code 1."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest

SERVE = [sys.executable, "-m", "kvblend", "serve", "--no-index"]
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"processId": None, "rootUri": None, "capabilities": {}}}  # fmt: skip
SHUTDOWN = {"jsonrpc": "2.0", "id": 2, "method": "shutdown"}
EXIT = {"jsonrpc": "2.0", "method": "exit"}


def frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reply(stream, msg_id: int) -> dict:
    """The response to request `msg_id` from the server's framed output."""
    while True:
        length = None
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        assert line, "the server closed its output"
        msg = json.loads(stream.read(length))
        if msg.get("id") == msg_id and "method" not in msg:
            return msg


class TcpClient:
    def __init__(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.1)
        self.file = self.sock.makefile("rb")

    def request(self, msg: dict) -> dict:
        self.sock.sendall(frame(msg))
        return reply(self.file, msg["id"])

    def close(self, reset: bool = False) -> None:
        if reset:  # an RST, not a FIN: the client died
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.file.close()
        self.sock.close()


def ended(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the server did not exit: " + proc.stderr.read().decode())
    return rc, proc.stderr.read().decode()


@pytest.mark.parametrize(
    ("ending", "code"),
    [("shutdown, exit", 0), ("exit", 1), ("close", 1), ("reset", 1), ("shutdown, close", 0)],
)
def test_tcp_exit_code_is_the_specifications(ending, code):
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--tcp", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = TcpClient(port)
        assert "capabilities" in client.request(INITIALIZE)["result"]
        try:  # one client per server: the port closed when it connected
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            second = "accepted"  # and served together with the first, through one protocol object
        except ConnectionRefusedError:
            second = "refused"
        if "shutdown" in ending:
            assert client.request(SHUTDOWN)["result"] is None
        if "exit" in ending:
            client.sock.sendall(frame(EXIT))
            assert client.file.read() == b""  # the server closed the connection
        client.close(reset=ending == "reset")
        rc, stderr = ended(proc)
    finally:
        proc.kill()
    assert rc == code, stderr  # a client gone without shutdown: the server hung (reset) or exited 0 (close)
    assert "Traceback" not in stderr, stderr  # `exit` was logged as an unhandled exception in the connection
    assert second == "refused"


@pytest.mark.parametrize(("shutdown", "code"), [(False, 1), (True, 0)])
def test_stdio_end_of_input_without_shutdown_exits_1(shutdown, code):
    proc = subprocess.Popen(SERVE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(frame(INITIALIZE) + (frame(SHUTDOWN) if shutdown else b""))
        proc.stdin.flush()
        assert "capabilities" in reply(proc.stdout, 1)["result"]
        if shutdown:
            assert reply(proc.stdout, 2)["result"] is None
        proc.stdin.close()  # the editor went away
        rc, stderr = ended(proc)
    finally:
        proc.kill()
    assert rc == code, stderr  # the server exited 0 without shutdown


def test_tcp_port_taken_is_one_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*SERVE, "--tcp", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"kvblend: cannot listen on 127.0.0.1:{port}: address already in use\n"
    r = subprocess.run([*SERVE, "--tcp", "70000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == "kvblend: --tcp 70000: a port is 1 to 65535\n"
