"""Secret detection: files that are never chunked, stored, logged or put into a prompt.

Two checks: the path (`.env*`, `*.pem`, `id_rsa*`, ...) and the content (private keys, well-known token
formats). A match never reports the matched text, only the rule's name.
"""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

from ledger.secrets import SECRET_HINTS, SECRET_NAMES, SECRET_PATTERNS


def is_secret_path(path: str) -> bool:
    """True for a workspace-relative path whose name marks it as a credential file (any case: `.ENV`, `ID_RSA`)."""
    name = PurePosixPath(path).name.lower()
    return any(fnmatch.fnmatchcase(name, pat) for pat in SECRET_NAMES)


def find_secret(text: str) -> str | None:
    """The name of the first credential pattern `text` contains, or None. A pattern runs only on text that
    holds one of its literal hints (a match always does)."""
    for name, pattern in SECRET_PATTERNS.items():
        if any(hint in text for hint in SECRET_HINTS[name]) and pattern.search(text):
            return name
    return None


def secret_in_span(text: str, start: int, end: int) -> str | None:
    """`find_secret` of `text[start:end]`, a part of a document (a prompt's window of it), that also catches a
    part lying inside a private key block opened before `start`: the key's own lines match no pattern."""
    found = find_secret(text[start:end])
    return found if found is not None or not _inside_key_block(text, start) else "private_key"


def _inside_key_block(text: str, pos: int) -> bool:
    """Whether the last private key marker before `pos` is a BEGIN line (its END line, which says PRIVATE KEY
    too, would come after it)."""
    at = text.rfind("PRIVATE KEY", 0, pos)
    if at < 0:
        return False
    line_start = text.rfind("\n", 0, at) + 1
    line_end = text.find("\n", at)
    return SECRET_PATTERNS["private_key"].search(text, line_start, len(text) if line_end < 0 else line_end) is not None


def redact_lines(text: str) -> str:
    """`text` without the lines that contain a credential (for commit messages and diff summaries)."""
    return "".join(line for line in text.splitlines(keepends=True) if find_secret(line) is None)
