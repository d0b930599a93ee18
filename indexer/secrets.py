"""Secret detection: files that are never chunked, stored, logged or put into a prompt.

Two checks: the path (`.env*`, `*.pem`, `id_rsa*`, ...) and the content (private keys, well-known token
formats). A match never reports the matched text, only the rule's name.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath

# Basename globs of files that hold credentials by convention.
SECRET_NAMES = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    "credentials.json",
)

# name -> pattern of a credential inside text (formats with a fixed, distinctive shape only: generic
# `password = ...` assignments are too common in code to be refused).
SECRET_PATTERNS = {
    "private_key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "aws_access_key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "github_token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "gitlab_token": re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b"),
    "slack_token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "openai_key": re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b"),
    "anthropic_key": re.compile(r"\bsk-ant-[A-Za-z0-9_-]{32,}\b"),
    "google_api_key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "huggingface_token": re.compile(r"\bhf_[A-Za-z0-9]{34,}\b"),
    "stripe_key": re.compile(r"\b[rs]k_live_[A-Za-z0-9]{20,}\b"),
}


def is_secret_path(path: str) -> bool:
    """True for a workspace-relative path whose name marks it as a credential file."""
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(name, pat) for pat in SECRET_NAMES)


def find_secret(text: str) -> str | None:
    """The name of the first credential pattern `text` contains, or None."""
    for name, pattern in SECRET_PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def redact_lines(text: str) -> str:
    """`text` without the lines that contain a credential (for commit messages and diff summaries)."""
    return "".join(line for line in text.splitlines(keepends=True) if find_secret(line) is None)
