"""Which workspace files are indexed, and why the others are not.

`read_source` decides one file (the watcher's path); `walk_workspace` applies it to the whole tree, pruning
ignored directories and never following a symlink (a link inside the workspace is indexed at its target's
own path; one that points outside, dangles or loops is skipped with its reason).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import stat
from pathlib import Path

from indexer.config import IndexerConfig
from indexer.ignore import IgnoreRules
from indexer.secrets import find_secret, is_secret_path
from ledger.paths import is_utf8

log = logging.getLogger(__name__)

# Extensions that are never text worth reading (checked before opening the file).
BINARY_EXTENSIONS = frozenset(
    (
        ".png .jpg .jpeg .gif .bmp .ico .webp .pdf .zip .gz .tgz .bz2 .xz .7z .tar .jar .whl .so .dylib .dll .exe"
        " .o .a .pyc .pyo .class .bin .dat .db .sqlite .safetensors .pt .pth .onnx .npy .npz .mp3 .mp4 .wav .ttf"
        " .woff .woff2"
    ).split()
)
_SNIFF = 8192  # bytes looked at for NULs
# The checks before the read see the path, the read sees whatever is there by then: it never follows a link
# swapped in (O_NOFOLLOW) and never waits on a FIFO (O_NONBLOCK); fstat then checks what was opened.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclasses.dataclass(frozen=True)
class SourceFile:
    path: str  # posix, relative to the workspace root
    text: str


@dataclasses.dataclass
class WalkResult:
    files: list[SourceFile]
    skipped: collections.Counter  # reason -> count (ignored directories count once)


def read_source(cfg: IndexerConfig, rules: IgnoreRules, rel: str) -> SourceFile | str:
    """The text of workspace file `rel`, or the reason it is not indexed."""
    if rules.is_ignored(rel):
        return "ignored"
    return _read_checked(cfg, rel)


def _bad_name(rel: str) -> str | None:
    """Why a name cannot go into a chunk header, or None. Not UTF-8 on disk (Linux names are bytes; Python maps
    the bad ones to lone surrogates, which the tokenizer refuses), or holding a line break: the header is
    `<|file_sep|>path\n`, so the rest of the name would read as the file's first line."""
    if not is_utf8(rel):
        return "not_utf8_name"
    return "line_break_in_name" if "\n" in rel or "\r" in rel else None


def _read_checked(cfg: IndexerConfig, rel: str) -> SourceFile | str:
    if (bad := _bad_name(rel)) is not None:
        return bad
    path = cfg.root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    if os.path.islink(path):
        return _link_reason(cfg.root, path)
    if not os.path.isfile(path):
        return "not_a_file"
    if is_secret_path(rel):
        return "secret"
    if st.st_size > cfg.max_file_bytes:
        return "too_large"
    if os.path.splitext(rel)[1].lower() in BINARY_EXTENSIONS:
        return "binary"
    data = _read_regular(path, cfg.max_file_bytes + 1)
    if isinstance(data, str):
        return data
    if len(data) > cfg.max_file_bytes:
        return "too_large"
    if b"\0" in data[:_SNIFF]:
        return "binary"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "not_utf8"
    if find_secret(text) is not None:
        return "secret"  # the rule's name is not logged either: it says what kind of secret is where
    return SourceFile(rel, text)


def _read_regular(path: Path, limit: int) -> bytes | str:
    """Up to `limit` bytes of `path` if it is still a regular file when opened, else the reason it is not (the
    file may have been replaced since it was looked at)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return "symlink" if e.errno == errno.ELOOP else "unreadable"  # ELOOP: a link swapped in
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not_a_file"
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    except OSError:
        return "unreadable"
    finally:
        os.close(fd)


def _link_reason(root: Path, link: Path) -> str:
    try:
        target = link.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises RuntimeError on loops
        return "symlink_loop"
    except OSError as e:
        return "symlink_loop" if e.errno == errno.ELOOP else "broken_symlink"
    if not target.is_relative_to(root):
        return "symlink_outside"
    if target.is_dir() and link.parent.resolve().is_relative_to(target):
        return "symlink_loop"  # a link to one of its own ancestors
    return "symlink"  # indexed at its target's own path


def walk_workspace(cfg: IndexerConfig, rules: IgnoreRules | None = None, under: str = "") -> WalkResult:
    """Every indexable file below `under` (default: the root), in sorted order, plus skip counts."""
    rules = rules or IgnoreRules(cfg.root, cfg.ignores)
    files: list[SourceFile] = []
    skipped: collections.Counter = collections.Counter()
    stack = [under.strip("/")]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(cfg.root / rel_dir), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", rel_dir or ".", e.strerror)
            skipped["unreadable"] += 1
            continue
        subdirs, warned = [], False
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if (bad := _bad_name(entry.name)) is not None:
                    skipped[bad] += 1  # a directory counts once, like an ignored one
                elif entry.is_symlink():
                    skipped[_link_reason(cfg.root, Path(entry.path))] += 1
                elif entry.is_dir(follow_symlinks=False):
                    if rules.matches(rel, True):
                        skipped["ignored"] += 1
                    else:
                        subdirs.append(rel)
                elif rules.matches(rel, False):
                    skipped["ignored"] += 1
                else:
                    got = _read_checked(cfg, rel)
                    if isinstance(got, str):
                        skipped[got] += 1
                    else:
                        files.append(got)
            except OSError as e:  # a directory that can be listed but not searched (mode r--): its names are known,
                skipped["unreadable"] += 1  # nothing about them (the ignore file's check raised and ended the walk)
                if not warned:
                    warned = True
                    log.warning("cannot read in %s: %s", rel_dir or ".", e.strerror)
        stack.extend(reversed(subdirs))
    files.sort(key=lambda f: f.path)
    return WalkResult(files, skipped)
