"""Workspace paths: normalize, confine to the workspace, resolve symlinks, match gitignore-style globs.

Every path an agent names goes through `confine` before a rule looks at it:

- `normalize` rejects what can never name a workspace file (empty, NUL, backslash, absolute, drive letters,
  `..` escaping the root) and returns the lexical posix form (`./a//b/../c` -> `a/c`).
- `confine` also resolves symlinks through the real filesystem and returns both forms; the resolved one must
  stay inside the workspace. A symlink inside the workspace that points at a protected path is judged as that
  path (the gate checks both forms).

`GlobSet` matches gitignore syntax: `*`, `?` and `[...]` stay within one segment, `**` as a whole segment
crosses them, a pattern with a `/` before its end is anchored at the root, a trailing `/` matches directories
only, `!` re-includes, the last matching pattern wins, and a path inside a matched directory is matched (it
cannot be re-included). Globs and paths are compared in Unicode NFC.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import unicodedata
from pathlib import Path

from ledger.globs import glob_to_regex

log = logging.getLogger(__name__)


class PathError(ValueError):
    """A path that names no file inside the workspace (absolute, escaping, through a symlink that leaves)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"path {path!r}: {problem}")
        self.path = path
        self.problem = problem


def normalize(path: str) -> str:
    """The lexical, workspace-relative posix form of `path`, or PathError."""
    if not path:
        raise PathError(path, "empty path")
    if "\0" in path:
        raise PathError(path, "contains a NUL byte")
    if "\\" in path:
        raise PathError(path, "contains a backslash; use '/' between directories")
    if not is_utf8(path):  # a lone surrogate (JSON allows "\ud800"): no file name, and no audit log line
        raise PathError(path, "is not valid Unicode (a lone surrogate)")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise PathError(path, "absolute paths are not allowed; name files relative to the workspace root")
    parts: list[str] = []
    for part in unicodedata.normalize("NFC", path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathError(path, "'..' leaves the workspace")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise PathError(path, "names the workspace root, not a file")
    return "/".join(parts)


def is_utf8(text: str) -> bool:
    """False for a str that cannot be written as UTF-8 (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class WorkspacePath:
    rel: str  # lexical form, as the agent named it (normalized)
    real: str  # after resolving symlinks; equal to `rel` when no symlink is involved
    abs: Path  # absolute path of the real file (what reads and writes use)

    @property
    def forms(self) -> tuple[str, ...]:
        return (self.rel,) if self.rel == self.real else (self.rel, self.real)


def confine(root: str | Path, path: str) -> WorkspacePath:
    """Normalize `path` and resolve it under `root`; PathError when it or a symlink on its way leaves `root`."""
    rel = normalize(path)
    real_root = _real_root(os.fspath(root))
    real = os.path.realpath(os.path.join(real_root, rel))
    if real == real_root:
        raise PathError(path, "resolves to the workspace root, not a file")
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathError(path, "resolves (through a symlink) outside the workspace")
    # NFC like `rel`: a symlink's target spelled in NFD on disk must still match the rules' (NFC) globs
    real_rel = unicodedata.normalize("NFC", real[len(real_root.rstrip(os.sep)) + 1 :].replace(os.sep, "/"))
    return WorkspacePath(rel, real_rel, Path(real))


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


@dataclasses.dataclass(frozen=True)
class _Glob:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _trim(raw: str) -> str:
    """`raw` without surrounding whitespace, except a trailing space escaped as `\\ ` (gitignore), in NFC:
    paths are compared in NFC, so a glob typed in NFD (`e` + combining accent) must be too."""
    pat = raw.strip()
    if raw.rstrip("\t\r\n").endswith(" ") and (len(pat) - len(pat.rstrip("\\"))) % 2:
        pat += " "
    return unicodedata.normalize("NFC", pat)


class GlobSet:
    """Gitignore-style patterns; `matches(rel)` for a workspace-relative file path.

    Raises ValueError naming the pattern for one that is empty or cannot be compiled (`[z-a]`, `[!]`, a
    trailing lone backslash), so that a policy reports it instead of failing with `re.error`.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...], ignore_case: bool = False) -> None:
        self.patterns = tuple(patterns)
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self._globs: list[_Glob] = []
        self._any: tuple[re.Pattern[str], re.Pattern[str]] | None = None  # (files, dirs) when nothing negates
        for raw in patterns:
            pat = _trim(raw)
            negate = pat.startswith("!")
            pat = pat[1:] if negate else pat
            dir_only = pat.endswith("/")
            pat = pat.rstrip("/")
            if not pat or pat.startswith("#"):
                raise ValueError(f"empty glob {raw!r}")
            if (len(pat) - len(pat.rstrip("\\"))) % 2:  # gitignore: a trailing lone backslash never matches
                raise ValueError(f"invalid glob {raw!r}: ends with an unescaped backslash")
            anchored = "/" in pat
            regex = glob_to_regex(pat.lstrip("/"))
            if not anchored:
                regex = "(?:.*/)?" + regex
            try:
                compiled = re.compile(f"^{regex}$", flags)
            except re.error as e:  # e.g. a reversed range `[z-a]`, an unterminated `[!]`
                raise ValueError(f"invalid glob {raw!r}: {e.msg}") from None
            self._globs.append(_Glob(compiled, negate, dir_only))
        if self._globs and not any(g.negate for g in self._globs):
            files = "|".join(f"(?:{g.regex.pattern})" for g in self._globs if not g.dir_only) or "(?!)"
            dirs = "|".join(f"(?:{g.regex.pattern})" for g in self._globs)
            self._any = (re.compile(files, flags), re.compile(dirs, flags))

    def _state(self, rel: str, is_dir: bool) -> bool:
        hit = False
        for g in self._globs:
            if (is_dir or not g.dir_only) and g.regex.match(rel):
                hit = not g.negate
        return hit

    def matches(self, rel: str) -> bool:
        """True when file `rel`, or a directory above it, is matched."""
        if self._any is not None:  # one alternation per prefix instead of one regex per pattern
            files, dirs = self._any
            if files.match(rel):
                return True
            i = rel.find("/")
            while i > 0:
                if dirs.match(rel, 0, i):
                    return True
                i = rel.find("/", i + 1)
            return False
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if self._state("/".join(parts[:depth]), True):
                return True
        return self._state(rel, False)

    def __bool__(self) -> bool:
        return bool(self._globs)
