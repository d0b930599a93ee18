"""What counts as a secret, shared by the indexer (never chunk, store, log or prompt it) and the ledger
(never let an agent write it). Torch-free, so the ledger can use it.
"""

from __future__ import annotations

import re

# Basename globs of files that hold credentials by convention, matched ignoring case (`.ENV`, `Server.PEM`).
SECRET_NAMES = (
    ".env*",  # .env, .env.local, .env-prod, .envrc (direnv)
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
    ".npmrc",
    ".pypirc",
    "credentials.json",
)

# name -> a credential with a fixed, distinctive shape (generic `password = ...` assignments are too common
# in code to be refused). Matches are reported by name, never by the text.
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

# name -> literals, one of which every match of SECRET_PATTERNS[name] contains. `str.__contains__` runs at
# memory speed while a pattern that starts with \b steps through the text in Python's regex engine (measured:
# scanning this repository's sources 206 ms -> 16 ms), so a pattern is only run on text holding a hint.
SECRET_HINTS = {
    "private_key": ("PRIVATE KEY",),
    "aws_access_key": ("AKIA", "ASIA"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab_token": ("glpat-",),
    "slack_token": ("xox",),
    "openai_key": ("sk-",),
    "anthropic_key": ("sk-ant-",),
    "google_api_key": ("AIza",),
    "huggingface_token": ("hf_",),
    "stripe_key": ("k_live_",),
}
