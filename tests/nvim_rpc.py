"""A minimal msgpack-rpc client for a Neovim started with --listen (enough for the editor tests)."""

from __future__ import annotations

import socket
import time
from typing import Any

import msgpack


class NvimError(RuntimeError):
    pass


class Nvim:
    def __init__(self, address: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def request(self, method: str, *args: Any) -> Any:
        self.msgid += 1
        msgid = self.msgid
        self.sock.sendall(msgpack.packb([0, msgid, method, list(args)]))
        while True:
            for msg in self.unpacker:
                if msg[0] == 1 and msg[1] == msgid:  # [1, id, error, result]
                    if msg[2] is not None:
                        raise NvimError(f"{method}: {msg[2]}")
                    return msg[3]
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("nvim closed the connection")
            self.unpacker.feed(data)

    def lua(self, code: str, *args: Any) -> Any:
        return self.request("nvim_exec_lua", code, list(args))

    def wait_for(self, code: str, timeout: float, what: str, *args: Any) -> Any:
        """Evaluate Lua `code` until it returns a truthy value (polling every 50 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.lua(code, *args)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        self.sock.close()
