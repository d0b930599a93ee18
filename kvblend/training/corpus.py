"""The training corpus: permissively licensed Python source on this machine, grouped into "repositories".

The CPython standard library (PSF licence) is the source. Each top-level package (asyncio, email, ...) is one
repository; top-level modules (and test modules) are grouped alphabetically into pseudo-repositories of ~12
files. A fixed, hash-chosen subset of repositories is held out: never trained on, used for held-out loss and probes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sysconfig
from pathlib import Path

# Files larger than this are mostly generated tables; they teach little and dominate sampling.
MAX_FILE_BYTES = 200_000
HELD_OUT_PERCENT = 5  # of repositories, chosen by a hash of their name (stable across machines)


@dataclasses.dataclass
class Repo:
    name: str
    files: list[tuple[str, str]]  # (path relative to the library root, text)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(repo_name: str) -> bool:
    digest = hashlib.sha256(repo_name.encode()).digest()
    return digest[0] * 100 // 256 < HELD_OUT_PERCENT


def load_repos(root: Path | None = None) -> list[Repo]:
    """All repositories under `root` (default: this interpreter's stdlib), sorted by name."""
    root = root or stdlib_root()
    packages: dict[str, list[tuple[str, str]]] = {}
    modules: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages", "__pycache__") or "lib2to3" in rel.parts:
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few test files are deliberately not UTF-8
        if not text.strip() or "\x00" in text:
            continue
        if len(rel.parts) == 1 or rel.parts[:1] == ("test",) and len(rel.parts) == 2:
            modules.append((str(rel), text))
        else:
            key = rel.parts[0] if rel.parts[0] != "test" else f"test/{rel.parts[1]}"
            packages.setdefault(key, []).append((str(rel), text))
    repos = [Repo(name, files) for name, files in packages.items()]
    for i in range(0, len(modules), 12):
        group = modules[i : i + 12]
        repos.append(Repo(f"{Path(group[0][0]).parent.name or 'stdlib'}-{Path(group[0][0]).stem}", group))
    return sorted(repos, key=lambda r: r.name)


def split_repos(repos: list[Repo]) -> tuple[list[Repo], list[Repo]]:
    """(train, held_out)."""
    train = [r for r in repos if not is_held_out(r.name)]
    held = [r for r in repos if is_held_out(r.name)]
    return train, held
