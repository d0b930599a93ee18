"""The gate's built-in hard denies, which no policy rule can allow: protected paths (`.git/`, `.kvblend/`), secret
files by name, credentials in the added lines, and the gate's own policy file and audit log wherever they lie
inside the workspace. Names are compared as a case-insensitive filesystem, or one that drops trailing dots and
spaces, would write them."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from ledger.changes import AddedLines, FileChange
from ledger.decision import Reason
from ledger.paths import GlobSet, WorkspacePath
from ledger.policy import PROTECTED_PATHS, SECRET_NAMES, SECRET_PATTERNS

_PROTECTED = [(p, GlobSet([p], ignore_case=True)) for p in PROTECTED_PATHS]
_SECRET_FILES = [(p, GlobSet([p], ignore_case=True)) for p in SECRET_NAMES]
_ANY_BUILTIN = GlobSet(PROTECTED_PATHS + SECRET_NAMES, ignore_case=True)  # one test first; which one only on a hit
VERB = {"edit": "editing", "create": "creating", "delete": "deleting", "rename": "renaming"}


def strip_segments(path: str) -> str:
    """`.git. /config` -> `.git/config`: names some filesystems treat as equal to the stripped name."""
    return "/".join(seg.rstrip(" .") or seg for seg in path.split("/"))


def own_files(root: Path, files: dict[str, str | Path]) -> dict[str, tuple[str, str]]:
    """{comparison key: (what, workspace path)} of `files` that lie inside the workspace."""
    real_root = os.path.realpath(root)
    out = {}
    for what, f in files.items():
        real = os.path.realpath(f)
        if real.startswith(real_root.rstrip(os.sep) + os.sep):
            rel = real[len(real_root.rstrip(os.sep)) + 1 :].replace(os.sep, "/")
            out[_own_key(rel)] = (what, rel)
    return out


def _own_key(path: str) -> str:
    # as for .git: a case-insensitive filesystem, or one that drops trailing dots, writes the same file
    return strip_segments(unicodedata.normalize("NFC", path)).casefold()


def own_reasons(op: str, wp: WorkspacePath, own: dict[str, tuple[str, str]]) -> list[Reason]:
    """A hard deny when `wp` is the gate's own policy file or audit log."""
    for form in wp.forms if own else ():
        hit = own.get(_own_key(form))
        if hit:
            msg = (
                f"{VERB[op]} {form}: it is this gate's {hit[0]} ({hit[1]}) (built-in, no rule can allow it) — "
                "change other files"
            )
            return [Reason("builtin.protected-path", msg, form)]
    return []


def path_reasons(op: str, wp: WorkspacePath) -> list[Reason]:
    """Hard denies by name: a protected path or a secret file, under the lexical or the resolved name."""
    for form in wp.forms:
        via = f" (through the symlink {wp.rel})" if form != wp.rel else ""
        for cand in dict.fromkeys((form, strip_segments(form))):
            if not _ANY_BUILTIN.matches(cand):
                continue
            hit = next((p for p, g in _PROTECTED if g.matches(cand)), None)
            if hit:
                protected = " and ".join(p + "/" for p in PROTECTED_PATHS)
                msg = (
                    f"{VERB[op]} {form}{via}: {hit}/ is protected (built-in, no rule can allow it) — change "
                    f"files outside {protected}"
                )
                return [Reason("builtin.protected-path", msg, form)]
            hit = next((p for p, g in _SECRET_FILES if g.matches(cand)), None)
            if hit:
                msg = (
                    f"{VERB[op]} {form}{via}: a secret file by name ({hit}) (built-in) — keep credentials out "
                    "of the repository and read them from the environment"
                )
                return [Reason("builtin.secret-file", msg, form)]
    return []


def builtin_reasons(c: FileChange, added: AddedLines, wps: list[WorkspacePath]) -> list[Reason]:
    """The hard denies of one change: protected paths, secret files, secrets in its added lines."""
    out = [r for wp in wps for r in path_reasons(c.op, wp)]
    for name, regex in SECRET_PATTERNS.items():
        if added.search(regex):
            target = c.new_path or c.path
            msg = (
                f"the added lines of {target} contain a {name.replace('_', ' ')} (built-in; the text is not "
                "logged) — remove the credential and load it from the environment or a secret store"
            )
            out.append(Reason("builtin.secret-content", msg, target))
    return out
