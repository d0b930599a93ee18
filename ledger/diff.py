"""Unified diffs: parse one into whole-file changes computed against the workspace's current files.

`parse_unified_diff` understands git diffs (`diff --git`, `new file mode`, `deleted file mode`, `rename
from/to`, `/dev/null`, quoted paths, `\\ No newline at end of file`) and plain `diff -u` output. It computes the
new content of every file by applying the hunks to the current files: each hunk must sit exactly at the line
its header names and its context must match byte for byte (no fuzz, no offsets). It rejects with PatchError
(carrying the patch line number): binary patches, symlink or submodule entries, copies, mode changes, hunks
whose line counts do not add up, hunks that do not apply, two changes to one path, an empty patch. Paths are
taken as git writes them: an `a/` or `b/` prefix is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

from ledger.changes import FileChange, split_lines
from ledger.paths import WorkspacePath, confine

log = logging.getLogger(__name__)

MAX_READ_BYTES = 16_000_000  # LedgerConfig.max_read_bytes; a file larger than this is never read for a patch


class PatchError(ValueError):
    """A patch that cannot be applied as written; `line` is its 1-based line in the patch (0 = unknown)."""

    def __init__(self, message: str, line: int = 0, path: str | None = None) -> None:
        super().__init__(f"patch line {line}: {message}" if line else message)
        self.line = line
        self.path = path


# ---- parsing -------------------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


@dataclasses.dataclass
class _Hunk:
    line: int  # patch line of the header
    old_start: int
    old_len: int
    old: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    changed: int = 0


@dataclasses.dataclass
class _FilePatch:
    line: int
    old: str | None = None  # None = /dev/null
    new: str | None = None
    created: bool = False
    deleted: bool = False
    rename_from: str | None = None
    rename_to: str | None = None
    hunks: list[_Hunk] = dataclasses.field(default_factory=list)

    @property
    def op(self) -> str:
        if self.created or self.old is None:
            return "create"
        if self.deleted or self.new is None:
            return "delete"
        return "rename" if self.old != self.new else "edit"


def _unquote(s: str, line: int) -> str:
    if not s.startswith('"'):
        return s
    if len(s) < 2 or not s.endswith('"'):
        raise PatchError(f"unterminated quoted path {s!r}", line)
    raw, i, body = bytearray(), 0, s[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "0123" and re.match(r"[0-7]{3}", body[i + 1 : i + 4]):
                raw.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            if nxt not in _ESCAPES:
                raise PatchError(f"bad escape in quoted path {s!r}", line)
            raw += _ESCAPES[nxt].encode()
            i += 2
        else:
            raw += c.encode()
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PatchError(f"quoted path {s!r} is not UTF-8", line) from None


def _header_path(value: str, prefix: str, line: int) -> str | None:
    value = value.split("\t", 1)[0] if not value.startswith('"') else value  # `diff -u` appends a timestamp
    value = _unquote(value.rstrip("\r"), line)
    if value == "/dev/null":
        return None
    return value[2:] if value.startswith(prefix) else value


def _git_line_path(rest: str) -> str | None:
    """The path of `diff --git a/P b/P` when both sides name the same file (no quoting)."""
    n = len(rest)
    if n % 2 == 0:
        return None
    half = n // 2
    a, b = rest[:half], rest[half + 1 :]
    if rest[half] == " " and a.startswith("a/") and b.startswith("b/") and a[2:] == b[2:]:
        return a[2:]
    return None


def _binary(path: str | None, line: int) -> PatchError:
    return PatchError(f"binary patch{f' for {path}' if path else ''}: only text changes can be checked", line, path)


def _parse_hunk(lines: list[str], i: int) -> tuple[_Hunk, int]:
    """Parse the hunk whose header is lines[i]; returns it and the index after it."""
    m = _HUNK.match(lines[i])
    if not m:
        raise PatchError(f"malformed hunk header {lines[i][:60]!r}; expected '@@ -a,b +c,d @@'", i + 1)
    old_len = 1 if m.group(2) is None else int(m.group(2))
    new_len = 1 if m.group(4) is None else int(m.group(4))
    h = _Hunk(i + 1, int(m.group(1)), old_len)
    old_n = new_n = 0
    last = ""
    old_closed = new_closed = False  # a `\ No newline` was seen: no more lines may follow on that side
    i += 1
    while old_n < old_len or new_n < new_len or (i < len(lines) and lines[i].startswith("\\")):
        if i >= len(lines):
            raise PatchError(
                f"hunk at line {h.line} ends early: {old_len - old_n} old and {new_len - new_n} new lines missing", i
            )
        raw = lines[i]
        kind, body = (raw[0], raw[1:]) if raw else (" ", "")  # an empty line: context whose space was stripped
        if kind == "\\":
            if not last:
                raise PatchError("'\\ No newline at end of file' before any line", i + 1)
            if last in " -":
                h.old[-1] = h.old[-1][:-1]
                old_closed = True
            if last in " +":
                h.new[-1] = h.new[-1][:-1]
                new_closed = True
            last = "\\"
            i += 1
            continue
        if kind not in " -+":
            raise PatchError(
                f"malformed hunk line {raw[:60]!r} in hunk at line {h.line}: expected ' ', '-' or '+' "
                f"({old_len - old_n} old and {new_len - new_n} new lines still expected)",
                i + 1,
            )
        if kind in " -":
            old_n += 1
            if old_closed or old_n > old_len:
                raise PatchError(f"hunk at line {h.line} has more old lines than its header says ({old_len})", i + 1)
            h.old.append(body + "\n")
        if kind in " +":
            new_n += 1
            if new_closed or new_n > new_len:
                raise PatchError(f"hunk at line {h.line} has more new lines than its header says ({new_len})", i + 1)
            h.new.append(body + "\n")
        if kind != " ":
            h.changed += 1
        last = kind
        i += 1
    return h, i


def _parse_body(lines: list[str], i: int, fp: _FilePatch) -> int:
    """Read `--- old` / `+++ new` at lines[i] and the hunks after them; returns the index after the last hunk."""
    fp.old = _header_path(lines[i][4:], "a/", i + 1)
    fp.new = _header_path(lines[i + 1][4:], "b/", i + 2)
    if fp.old is None and fp.new is None:
        raise PatchError("both sides are /dev/null", i + 1)
    fp.created = fp.created or fp.old is None
    fp.deleted = fp.deleted or fp.new is None
    i += 2
    while i < len(lines) and lines[i].startswith("@@"):
        h, i = _parse_hunk(lines, i)
        fp.hunks.append(h)
    if not fp.hunks:
        raise PatchError(f"file header for {fp.new or fp.old} is followed by no hunk", i + 1)
    if i < len(lines) and lines[i][:1] in ("+", "-", " ") and not lines[i].startswith(("--- ", "-- ")):
        raise PatchError(
            f"line {lines[i][:60]!r} follows a complete hunk: the hunk header's line counts are wrong", i + 1
        )
    return i


def _is_file_header(lines: list[str], i: int) -> bool:
    return lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")


def _parse_files(text: str) -> list[_FilePatch]:
    if "\0" in text:
        raise _binary(None, text.count("\n", 0, text.index("\0")) + 1)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    files: list[_FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        if line.startswith("diff --git "):
            path = _git_line_path(line[11:])
            fp = _FilePatch(i + 1, path, path)
            files.append(fp)
            i = _parse_git_extended(lines, i + 1, fp)
            if i < len(lines) and _is_file_header(lines, i):
                i = _parse_body(lines, i, fp)
            elif i < len(lines) and lines[i].startswith("@@"):
                raise PatchError("hunk without a '--- a/path' / '+++ b/path' file header", i + 1)
        elif _is_file_header(lines, i):
            fp = _FilePatch(i + 1)
            files.append(fp)
            i = _parse_body(lines, i, fp)
        elif line.startswith("@@"):
            raise PatchError("hunk without a '--- a/path' / '+++ b/path' file header", i + 1)
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            raise _binary(None, i + 1)
        else:
            i += 1  # preamble (commit message, `index` lines of plain diffs, a format-patch signature)
    if not files:
        raise PatchError("no file changes found in the patch")
    return files


def _parse_git_extended(lines: list[str], i: int, fp: _FilePatch) -> int:
    """Read the extended header lines after `diff --git`; returns the index of the first other line."""
    while i < len(lines):
        line = lines[i].rstrip("\r")
        if line.startswith(("new file mode ", "deleted file mode ", "old mode ", "new mode ")):
            mode = line.rsplit(" ", 1)[1]
            if mode in ("120000", "160000"):
                what = "symlink" if mode == "120000" else "submodule"
                raise PatchError(f"{what} entries cannot be written by a patch", i + 1, fp.new)
            if line.startswith(("old mode ", "new mode ")):
                raise PatchError("file mode changes are not supported", i + 1, fp.new)
            fp.created = fp.created or line.startswith("new file mode ")
            fp.deleted = fp.deleted or line.startswith("deleted file mode ")
        elif line.startswith("rename from "):
            fp.rename_from = _unquote(line[12:], i + 1)
        elif line.startswith("rename to "):
            fp.rename_to = _unquote(line[10:], i + 1)
        elif line.startswith(("copy from ", "copy to ")):
            raise PatchError("copies are not supported; send a file creation instead", i + 1, fp.new)
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            raise _binary(fp.new, i + 1)
        elif not line.startswith(("index ", "similarity index ", "dissimilarity index ")):
            break
        i += 1
    if fp.rename_from is not None or fp.rename_to is not None:
        if fp.rename_from is None or fp.rename_to is None:
            raise PatchError("'rename from' without 'rename to' (or the reverse)", i)
        fp.old, fp.new = fp.rename_from, fp.rename_to
    return i


# ---- computing the new contents --------------------------------------------------------------------------------


def _read_text(wp: WorkspacePath, line: int, max_bytes: int = MAX_READ_BYTES) -> str:
    if not wp.abs.is_file():
        raise PatchError(f"{wp.rel} does not exist (or is not a regular file) in the workspace", line, wp.rel)
    if wp.abs.stat().st_size > max_bytes:
        raise PatchError(f"{wp.rel} is larger than {max_bytes} bytes; it cannot be patched", line, wp.rel)
    data = wp.abs.read_bytes()
    if b"\0" in data:
        raise _binary(wp.rel, line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PatchError(f"{wp.rel} is not UTF-8 text; only text files can be patched", line, wp.rel) from None


def _apply_hunks(old_text: str, fp: _FilePatch, path: str) -> str:
    file_lines = split_lines(old_text)
    out: list[str] = []
    pos = 0
    for n, h in enumerate(fp.hunks, 1):
        start = h.old_start - 1 if h.old_len > 0 else h.old_start
        if start < pos:
            raise PatchError(f"hunk {n} of {path} overlaps or precedes the previous hunk", h.line, path)
        if start + len(h.old) > len(file_lines) or file_lines[start : start + len(h.old)] != h.old:
            got = file_lines[start : start + len(h.old)]
            k = next((k for k, (a, b) in enumerate(zip(got, h.old, strict=False)) if a != b), min(len(got), len(h.old)))
            raise PatchError(
                f"hunk {n} of {path} does not apply: its context differs from the file at line "
                f"{start + k + 1}; regenerate the patch against the current file",
                h.line,
                path,
            )
        out += file_lines[pos:start]
        out += h.new
        pos = start + len(h.old)
    out += file_lines[pos:]
    if any(not s.endswith("\n") for s in out[:-1]):
        raise PatchError(f"'\\ No newline at end of file' in {path} is not at the end of the file", fp.line, path)
    return "".join(out)


def patch_targets(text: str) -> list[tuple[str, str]]:
    """(op, path) of every path the unified diff `text` writes (both sides of a rename), from its syntax alone.

    Lets the gate judge paths before reading any file; raises PatchError like `parse_unified_diff`.
    """
    out = []
    for fp in _parse_files(text):
        for path in dict.fromkeys(p for p in (fp.old, fp.new) if p is not None):
            out.append((fp.op, path))
    return out


def parse_unified_diff(text: str, repo_root: str | Path, max_read_bytes: int = MAX_READ_BYTES) -> list[FileChange]:
    """Whole-file changes of the unified diff `text` against the files under `repo_root` (nothing is written).

    Raises PatchError for anything that cannot be applied exactly as written and PathError (from `confine`)
    for a path outside the workspace.
    """
    changes: list[FileChange] = []
    seen: set[str] = set()
    for fp in _parse_files(text):
        if fp.old is None and fp.new is None:
            raise PatchError("cannot tell which file this section changes", fp.line)
        changed = sum(h.changed for h in fp.hunks)
        target = None
        if fp.created or fp.old is None:
            path = fp.new or ""
            wp = confine(repo_root, path)
            if os.path.lexists(Path(repo_root) / wp.rel) or os.path.lexists(wp.abs):
                raise PatchError(f"{wp.rel} already exists; a creation needs a path that does not", fp.line, wp.rel)
            change = FileChange("create", path, None, None, _apply_hunks("", fp, path), changed)
        elif fp.deleted or fp.new is None:
            path = fp.old or ""
            wp = confine(repo_root, path)
            old = _read_text(wp, fp.line, max_read_bytes)
            if _apply_hunks(old, fp, path) != "":
                raise PatchError(f"deleting {path}: the hunks do not remove all of its content", fp.line, path)
            change = FileChange("delete", path, None, old, None, changed)
        else:
            wp = confine(repo_root, fp.old)
            old = _read_text(wp, fp.line, max_read_bytes)
            new = _apply_hunks(old, fp, fp.old)
            if fp.old != fp.new:
                target = confine(repo_root, fp.new)
                if os.path.lexists(Path(repo_root) / target.rel) or os.path.lexists(target.abs):
                    raise PatchError(f"rename target {target.rel} already exists", fp.line, target.rel)
                change = FileChange("rename", fp.old, fp.new, old, new, changed)
            else:
                change = FileChange("edit", fp.old, None, old, new, changed)
        for p, key in zip(change.paths, (wp.real, target.real if target else ""), strict=False):
            if key in seen:
                raise PatchError(f"{p} is changed twice in one patch; merge the sections", fp.line, p)
            seen.add(key)
        changes.append(change)
    return changes
