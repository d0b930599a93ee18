"""Secret detection: files that are never chunked, stored, logged or put into a prompt.

Two checks: the path (`.env*`, `*.pem`, `id_rsa*`, ...) and the content (private keys, well-known token
formats). A match never reports the matched text, only the rule's name.
"""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath

from ledger.secrets import SECRET_HINTS, SECRET_NAMES, SECRET_PATTERNS


def is_secret_path(path: str) -> bool:
    """True for a workspace-relative path whose name marks it as a credential file."""
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(name, pat) for pat in SECRET_NAMES)


def find_secret(text: str) -> str | None:
    """The name of the first credential pattern `text` contains, or None. A pattern runs only on text that
    holds one of its literal hints (a match always does)."""
    for name, pattern in SECRET_PATTERNS.items():
        if any(hint in text for hint in SECRET_HINTS[name]) and pattern.search(text):
            return name
    return None


def redact_lines(text: str) -> str:
    """`text` without the lines that contain a credential (for commit messages and diff summaries)."""
    return "".join(line for line in text.splitlines(keepends=True) if find_secret(line) is None)
