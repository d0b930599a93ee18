"""File changes: the whole-file edits the gate judges, their added lines, and applying them atomically.

`merge_renames` folds the edits of a rename's new name that continue it (an LSP client applies a RenameFile and
then TextDocumentEdits of the new uri in order) into the rename: one change, judged and written as one.

`apply_changes` validates everything first (paths confined, every file still holding the content the change
was computed from, targets of creates and renames absent), then writes each file through a temporary file and
an atomic rename; if a write fails midway the files already replaced are restored from the old texts.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tempfile
from pathlib import Path

from ledger.paths import PathError, WorkspacePath, confine, normalize

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FileChange:
    op: str  # edit | create | delete | rename
    path: str  # workspace-relative, as proposed (the source of a rename)
    new_path: str | None = None  # the target of a rename
    old_text: str | None = None  # current content (None for create)
    new_text: str | None = None  # content after the change (None for delete)
    lines_changed: int = 0  # added + removed lines

    @classmethod
    def build(
        cls, op: str, path: str, old_text: str | None = None, new_text: str | None = None, new_path: str | None = None
    ) -> FileChange:
        """A change with `lines_changed` counted by a line diff (for callers that hold whole texts, e.g. LSP)."""
        old, new = split_lines(old_text or ""), split_lines(new_text or "")
        n = 0
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
            if tag != "equal":
                n += (i2 - i1) + (j2 - j1)
        return cls(op, path, new_path, old_text, new_text, n)

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) if self.new_path is None else (self.path, self.new_path)

    @property
    def ops(self) -> tuple[str, ...]:
        """The operations rules' `ops` see: a rename that also changes the text is an edit too, so that a rule
        on edits cannot be passed by renaming a file in the same change."""
        if self.op == "rename" and self.old_text != self.new_text:
            return ("rename", "edit")
        return (self.op,)


def merge_renames(changes: list[FileChange]) -> list[FileChange]:
    """`changes` with every edit of a rename's new name whose `old_text` is the text the rename left folded into
    the rename: one change from the file before the rename to the file after the edits, so that the gate
    judges what is written, under both names. Anything else stays as it is (the gate denies a file written
    twice); `changes` itself when it holds no rename."""
    if not any(c.op == "rename" for c in changes):
        return changes
    out: list[FileChange] = []
    renamed: dict[str, int] = {}  # new name of a rename -> its index in `out`, while nothing else touched it
    for c in changes:
        names = [_name(p) for p in c.paths]
        i = renamed.get(names[0]) if c.op == "edit" else None
        if i is not None and c.old_text is not None and out[i].new_text == c.old_text:
            r = out[i]
            out[i] = FileChange.build("rename", r.path, r.old_text, c.new_text, new_path=r.new_path)
            continue
        for name in names:
            renamed.pop(name, None)
        if c.op == "rename" and c.new_path is not None:
            renamed[names[1]] = len(out)
        out.append(c)
    return out


def _name(path: str) -> str:
    try:
        return normalize(path)
    except PathError:  # the gate denies it; nothing to fold
        return path


def split_lines(text: str) -> list[str]:
    """Lines with their `\\n` kept; only `\\n` separates lines (a `\\r` stays part of its line)."""
    if not text:
        return []
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


class AddedLines:
    """The added lines of a change: a cheap superset first (the middle between the common prefix and suffix),
    the exact set from a line diff only when a pattern hits the superset."""

    def __init__(self, c: FileChange) -> None:
        self._old = c.old_text
        self._new = c.new_text
        self._exact: str | None = None
        if c.new_text is None:
            self.coarse, self._old_mid = "", False
            return
        if c.old_text is None:
            self.coarse, self._old_mid = c.new_text, False
            return
        old, new = split_lines(c.old_text), split_lines(c.new_text)
        n = min(len(old), len(new))
        p = 0
        while p < n and old[p] == new[p]:
            p += 1
        s = 0
        while s < n - p and old[-1 - s] == new[-1 - s]:
            s += 1
        self.coarse = "".join(new[p : len(new) - s])
        self._old_mid = len(old) - s > p  # lines were also removed: the middle may hold unchanged lines

    def exact(self) -> str:
        if self._exact is None:
            if not self._old_mid:
                self._exact = self.coarse
            else:
                old, new = split_lines(self._old or ""), split_lines(self._new or "")
                sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
                self._exact = "".join("".join(new[j1:j2]) for tag, _, _, j1, j2 in sm.get_opcodes() if tag != "equal")
        return self._exact

    def search(self, regex) -> bool:
        return bool(regex.search(self.coarse)) and bool(regex.search(self.exact()))


# ---- applying --------------------------------------------------------------------------------------------------


def _current(wp: WorkspacePath) -> str | None:
    try:
        return wp.abs.read_bytes().decode("utf-8") if wp.abs.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _write_temp(target: Path, text: str, mode: int | None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".kvblend-tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        os.chmod(tmp, mode if mode is not None else 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def apply_changes(repo_root: str | Path, changes: list[FileChange]) -> None:
    """Write `changes` under `repo_root`: all validated first, each file replaced atomically.

    Raises ValueError (nothing written) when a path leaves the workspace, a file no longer holds `old_text`,
    or the target of a create or rename exists. Paths through symlinks write the symlink's target.
    """
    plan: list[tuple[FileChange, WorkspacePath, WorkspacePath | None]] = []
    for c in changes:
        src = confine(repo_root, c.path)
        dst = confine(repo_root, c.new_path) if c.new_path is not None else None
        if c.op == "create":
            if os.path.lexists(src.abs) or c.new_text is None:
                raise ValueError(f"cannot create {c.path}: it exists now (or the change has no content)")
        elif c.op in ("edit", "delete", "rename"):
            if _current(src) != c.old_text or c.old_text is None:
                raise ValueError(f"{c.path} changed since the edit was computed; recompute it against the file")
            if c.op != "delete" and c.new_text is None:
                raise ValueError(f"{c.op} of {c.path} carries no new content")
            if c.op == "rename" and (dst is None or os.path.lexists(dst.abs)):
                raise ValueError(f"cannot rename {c.path} to {c.new_path}: the target exists or is missing")
        else:
            raise ValueError(f"unknown operation {c.op!r} for {c.path}")
        plan.append((c, src, dst))

    temps: list[Path | None] = []
    try:
        for c, src, dst in plan:
            mode = (src.abs.stat().st_mode & 0o7777) if c.op != "create" else None
            target = dst.abs if dst is not None else src.abs
            temps.append(_write_temp(target, c.new_text, mode) if c.new_text is not None else None)
    except BaseException:
        for t in temps:
            if t is not None:
                t.unlink(missing_ok=True)
        raise

    done: list[tuple[FileChange, WorkspacePath, WorkspacePath | None]] = []
    try:
        for (c, src, dst), tmp in zip(plan, temps, strict=True):
            if c.op in ("edit", "create"):
                os.replace(tmp, src.abs)
            elif c.op == "delete":
                src.abs.unlink()
            else:
                os.replace(tmp, dst.abs)
                src.abs.unlink()
            done.append((c, src, dst))
    except BaseException:
        log.error("applying changes failed midway; restoring %d file(s)", len(done))
        for t in temps:
            if t is not None:
                t.unlink(missing_ok=True)
        for c, src, dst in reversed(done):
            if c.op == "create":
                src.abs.unlink(missing_ok=True)
            else:
                src.abs.write_text(c.old_text or "", encoding="utf-8", newline="")
                if dst is not None:
                    dst.abs.unlink(missing_ok=True)
        raise
    log.info("applied %d change(s) under %s", len(changes), repo_root)
