"""Shared fixtures of the ledger tests: a small workspace, a byte snapshot of it, a unified-diff helper."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

APP = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TEST_APP = "from src.app import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----\n"
GITHUB_TOKEN = "ghp_" + "a1B2" * 9


def make_repo(root: Path, policy: str | None = None) -> Path:
    """A workspace with code, tests, a .git directory, a .env file and symlinks; `policy` -> .kvblend/policy.toml."""
    (root / "src").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "docs").mkdir()
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP)
    (root / "tests" / "test_app.py").write_text(TEST_APP)
    (root / "docs" / "guide.md").write_text("# Guide\n\nRead me.\n")
    (root / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (root / ".env").write_text("TOKEN=abc\n")
    (root / ".kvblend").mkdir()
    if policy is not None:
        (root / ".kvblend" / "policy.toml").write_text(policy)
    os.symlink("../.git/config", root / "docs" / "config-link")  # inside the workspace, at a protected file
    os.symlink(".git", root / "gitdir")  # a directory link to a protected directory
    (root.parent / "outside.txt").write_text("outside\n")
    os.symlink("../../outside.txt", root / "docs" / "out-link")  # leaves the workspace
    return root


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every symlink's target under `root` (and the file beside it), audit log excluded."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == ".kvblend/audit.jsonl":
                continue
            out[rel] = "-> " + os.readlink(p) if p.is_symlink() else p.read_bytes()
    out["../outside.txt"] = (root.parent / "outside.txt").read_bytes()
    return out


def udiff(path: str, old: str | None, new: str | None) -> str:
    """A git-style unified diff of one file (old None = creation, new None = deletion); texts end with \\n."""
    a = f"a/{path}" if old is not None else "/dev/null"
    b = f"b/{path}" if new is not None else "/dev/null"
    head = f"diff --git a/{path} b/{path}\n"
    if old is None:
        head += "new file mode 100644\n"
    if new is None:
        head += "deleted file mode 100644\n"
    body = difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True), a, b)
    return head + "".join(body)
