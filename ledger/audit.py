"""The audit log: one JSON object per line, hash-chained so that an edited, inserted or removed line shows.

Every record carries `seq` (1, 2, ...), `prev` (the previous record's `hash`; 64 zeros for the first) and
`hash` = sha256 of the record without `hash`, serialized canonically (sorted keys, no spaces, UTF-8). A writer
takes an exclusive `flock` while it reads the last record and appends, so processes can share one log.
`verify_audit` recomputes the chain. Cutting records off the end leaves a valid shorter chain: pin the last
hash elsewhere (`AuditLog.head()`) when that matters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: appends are not serialized between processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class AuditError(ValueError):
    """The audit log cannot be appended to (unreadable, or its last record is damaged)."""


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _loggable(value: Any) -> Any:
    """`value` with every lone surrogate written as `\\udXXX`: such a str (a path from a JSON request) cannot
    be encoded as UTF-8, and the decision that refuses it must still be logged."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_loggable(k): _loggable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_loggable(v) for v in value]
    return value


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The record of one raw log line, or None when it is not a UTF-8 JSON object (a damaged line)."""
    try:
        rec = json.loads(raw.decode("utf-8"))  # decoded first: json.loads(bytes) would also accept UTF-16/a BOM
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError; RecursionError: deep nesting
        return None
    return rec if isinstance(rec, dict) else None


def is_chained(rec: dict[str, Any]) -> bool:
    """True when `rec` carries its own hash and a `seq` >= 1 (its link to the previous record is not checked)."""
    seq = rec.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return False
    try:
        return rec.get("hash") == record_hash(rec)
    except (ValueError, RecursionError):  # a lone surrogate cannot be encoded; nesting too deep to serialize
        return False


def _last_line(f) -> bytes:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    block, pos, buf = 4096, end, b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        body = buf[:-1] if buf.endswith(b"\n") else buf
        nl = body.rfind(b"\n")
        if nl >= 0:
            return body[nl + 1 :]
    return buf[:-1] if buf.endswith(b"\n") else buf


class AuditLog:
    """Appends hash-chained records to a JSONL file (created with its directory on first use)."""

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._cached: tuple[int, str, int] | None = None  # (file size, last hash, last seq) after our last append

    def _tail(self, f) -> tuple[str, int]:
        size = f.seek(0, os.SEEK_END)
        if self._cached is not None and self._cached[0] == size:
            return self._cached[1], self._cached[2]
        if size == 0:
            return GENESIS, 0
        f.seek(size - 1)
        torn = f.read(1) != b"\n"  # an append would run on in the same line
        rec = None if torn else parse_record(_last_line(f))
        if rec is None or not is_chained(rec):
            raise AuditError(
                f"the last record of {self.path} is damaged; run `kvblend ledger verify-audit "
                f"{self.path}` and move the file aside to start a new chain"
            )
        return rec["hash"], rec["seq"]

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append `entry` (JSON-serializable) with `seq`, `prev` and `hash` added; returns the full record."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                prev, seq = self._tail(f)
                record = {**_loggable(entry), "seq": seq + 1, "prev": prev}
                record["hash"] = record_hash(record)
                line = _canonical(record) + "\n"
                f.write(line.encode("utf-8"))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
                self._cached = (f.tell(), record["hash"], record["seq"])
        except OSError as e:
            raise AuditError(f"cannot append to audit log {self.path}: {e.strerror}") from None
        return record

    def head(self) -> str:
        """The hash of the last record (GENESIS for an empty or missing log)."""
        if not self.path.exists():
            return GENESIS
        with open(self.path, "rb") as f:
            return self._tail(f)[0]


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """All records of a log (not verified; call `verify_audit` for that)."""
    with open(path, encoding="utf-8", newline="\n") as f:  # lines end at \n only, as in `verify_audit`
        return [json.loads(line) for line in f if line.strip()]


def verify_audit(path: str | Path) -> tuple[bool, int | None]:
    """(True, None) when every line is a record exactly as written, and its hash, `prev` link and `seq` check
    out; else (False, first bad line).

    Raises OSError when the file cannot be read.
    """
    prev = GENESIS
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            rec = parse_record(raw)
            if rec is None or not raw.endswith(b"\n"):
                return False, n
            # the exact bytes the writer wrote: a line that parses to the same record (a key repeated in
            # front, which Python drops but a first-wins reader would show, or changed spacing) was edited
            canonical = is_chained(rec) and raw == _canonical(rec).encode("utf-8") + b"\n"
            if not canonical or rec.get("prev") != prev or rec["seq"] != n:
                log.warning("audit log %s: chain broken at line %d", path, n)
                return False, n
            prev = rec["hash"]
    return True, None
