"""Recent git history as chunks: the last K commits, message plus a bounded diff summary, secrets removed."""

from __future__ import annotations

import logging
from pathlib import Path

from indexer.chunker import Chunk, Chunker
from indexer.secrets import find_secret, is_secret_path, redact_lines

log = logging.getLogger(__name__)

COMMIT_PREFIX = ".git/commits/"  # the path commit chunks are rendered under: .git/commits/<sha12>
# A file version bigger than this is not read to look for credentials: its diff is not shown.
SCAN_BYTES = 1 << 20


def commit_texts(root: Path, n_commits: int, diff_lines: int, is_ignored=None) -> list[tuple[str, str]]:
    """[(sha12, text)] for the last `n_commits` of HEAD, newest first; [] outside a git repository.

    text: header, message and per file `path | +a -b` with up to `diff_lines` changed lines overall. Files
    that are secrets (by name, or by the content of either version: a hunk inside a private key holds no
    pattern of its own), binary or ignored (`is_ignored(path) -> bool`) show no lines; any line holding a
    credential pattern is dropped.
    """
    try:
        import git  # GitPython imports fail where no git binary is installed
    except ImportError as e:
        log.warning("git history not indexed: %s", e)
        return []
    try:
        repo = git.Repo(root, search_parent_directories=False)
        commits = list(repo.iter_commits("HEAD", max_count=n_commits)) if repo.head.is_valid() else []
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return []
    except git.GitCommandError as e:
        log.warning("cannot read git history of %s: %s", root, _first_line(e))
        return []
    shallow = _shallow_commits(repo)
    out = []
    for c in commits:
        try:
            out.append((c.hexsha[:12], _summary(git, c, diff_lines, is_ignored, c.hexsha in shallow)))
        except (git.GitCommandError, ValueError) as e:
            log.warning("commit %s not indexed: %s", c.hexsha[:12], _first_line(e))
    return out


def _first_line(e: Exception) -> str:
    """One line for a warning: git's first line of stderr (GitPython's message spans the command line and all
    of git's stderr), else the message's first line."""
    stderr = [ln.strip() for ln in str(getattr(e, "stderr", None) or "").splitlines() if ln.strip()]
    if stderr:
        return stderr[0].removeprefix("stderr:").strip(" '")
    message = str(e).strip()
    return message.splitlines()[0] if message else type(e).__name__


def _shallow_commits(repo) -> set[str]:
    """The commits of a shallow clone whose parents were not fetched (`<git dir>/shallow`, one sha a line)."""
    try:
        return set(Path(repo.common_dir, "shallow").read_text().split())
    except OSError:
        return set()


def _summary(git, commit, diff_lines: int, is_ignored, shallow: bool = False) -> str:
    when = commit.committed_datetime.isoformat()
    parts = [f"commit {commit.hexsha[:12]}\nAuthor: {commit.author.name}\nDate: {when}\n\n"]
    parts.append(redact_lines(commit.message.strip()) + "\n\n")
    if shallow:  # its parent is not in the clone: no diff to show (a whole tree as "added" would say nothing)
        return redact_lines("".join(parts) + "(shallow clone: parent not fetched, diff not shown)\n")
    parent = commit.parents[0] if commit.parents else None
    diffs = parent.diff(commit, create_patch=True) if parent else commit.diff(git.NULL_TREE, create_patch=True)
    stats, excerpts, budget = [], [], diff_lines
    for d in sorted(diffs, key=lambda d: d.b_path or d.a_path or ""):
        path = d.b_path or d.a_path or "?"
        patch = d.diff.decode("utf-8", "replace") if isinstance(d.diff, bytes) else str(d.diff or "")
        changed = [ln for ln in patch.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        plus = sum(ln.startswith("+") for ln in changed)
        hidden = (
            is_secret_path(path)
            or "Binary files" in patch
            or "\0" in patch
            or (is_ignored is not None and is_ignored(path))
            or find_secret(patch) is not None
            or _holds_secret(git, d.a_blob)
            or _holds_secret(git, d.b_blob)
        )
        stats.append(f"{path} | +{plus} -{len(changed) - plus}{' (diff not shown)' if hidden else ''}\n")
        keep = [] if hidden else changed[: max(budget, 0)]
        budget -= len(keep)
        if keep:
            excerpts += [f"@@ {path}\n"] + [ln + "\n" for ln in keep]
    # every file's stat line first, so a summary cut to fit a chunk still lists what the commit touched
    parts += stats + (["\n"] if excerpts else []) + excerpts
    return redact_lines("".join(parts))


def _holds_secret(git, blob) -> bool:
    """Whether one side of a diff (a GitPython blob, None for an added or deleted file) holds a credential;
    a version that is too big to scan or cannot be read (a submodule, a missing object) counts as one."""
    if blob is None:
        return False
    try:
        if blob.size > SCAN_BYTES:
            return True
        return find_secret(blob.data_stream.read().decode("utf-8", "replace")) is not None
    except (ValueError, OSError, git.GitCommandError):
        return True


def commit_chunks(chunker: Chunker, texts: list[tuple[str, str]]) -> list[Chunk]:
    """One chunk per commit (its summary cut at a line so it fits the token limit)."""
    chunks = []
    for sha, text in texts:
        lines = text.splitlines(keepends=True)
        while True:
            chunk = chunker.make(COMMIT_PREFIX + sha, "commit", "".join(lines), 0, 0)
            if chunk.n_tokens <= chunker.max_tokens or len(lines) <= 1:
                break
            lines = lines[: max(1, len(lines) * 3 // 4)]
        if chunk.n_tokens <= chunker.max_tokens and find_secret(chunk.text) is None:
            chunks.append(chunk)
    return chunks
