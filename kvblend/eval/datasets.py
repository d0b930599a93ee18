"""Evaluation items and where they come from: HumanEval infilling files, our own jsonl format
(`kvblend/eval/FORMAT.md`), or repository holes generated from a local repository (`holes.py`).

An item is one fill-in-the-middle request: the document is `prefix + suffix`, the cursor sits between them,
and `middle` is the reference. Its context is a repository on disk (`repo`), a set of files given inline
(`context_files`), or nothing.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import json
import logging
import random
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

HUMANEVAL_FIELDS = ("task_id", "prompt", "suffix", "canonical_solution")
OWN_FIELDS = ("id", "prefix", "suffix", "middle")


class DatasetError(ValueError):
    """A dataset that cannot be read: the file, the line and the offending value are in the message."""


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str
    path: str  # workspace-relative posix path of the document holding the hole
    prefix: str  # document text before the cursor
    suffix: str  # document text after the hole
    middle: str  # the reference completion
    repo: str | None = None  # absolute path of a local repository used as context
    context_files: dict[str, str] | None = None  # {path: text} used as context (written to a temp workspace)
    meta: dict = dataclasses.field(default_factory=dict)  # e.g. the line and identifiers of a repository hole

    @property
    def text(self) -> str:
        return self.prefix + self.suffix

    @property
    def cursor(self) -> int:
        return len(self.prefix)

    @property
    def multiline(self) -> bool:
        """Whether the reference spans more than one line (decides the Completer's stop rule)."""
        return "\n" in self.middle.strip("\n")

    def context_key(self) -> tuple[str, str] | None:
        """Items with equal keys share one indexed workspace."""
        if self.repo is not None:
            return ("repo", self.repo)
        if self.context_files:
            blob = json.dumps(sorted(self.context_files.items())).encode("utf-8", "surrogatepass")
            return ("files", hashlib.blake2b(blob, digest_size=12).hexdigest())
        return None


def select(items: list[EvalItem], seed: int, limit: int | None) -> list[EvalItem]:
    """The first `limit` items (all with None) after a shuffle seeded by `seed`; items sorted by id first, so
    the result depends only on the items, the seed and the limit."""
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be >= 1, got {limit}")
    out = sorted(items, key=lambda it: it.id)
    random.Random(seed).shuffle(out)
    return out if limit is None else out[:limit]


def load_dataset(path: Path, seed: int = 0, limit: int | None = None) -> tuple[str, list[EvalItem]]:
    """(kind, items) for `--dataset PATH`: a directory -> repository holes; a .jsonl / .jsonl.gz file ->
    HumanEval infilling or our own format (told apart by their fields)."""
    path = Path(path)
    if path.is_dir():
        from kvblend.eval.holes import repository_holes

        return "repo_holes", select(repository_holes(path), seed, limit)
    if not path.is_file():
        raise DatasetError(f"dataset not found: {path} (expected a directory or a .jsonl / .jsonl.gz file)")
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise DatasetError(f"dataset {path}: expected a .jsonl or .jsonl.gz file or a directory")
    kind, items = read_jsonl(path)
    return kind, select(items, seed, limit)


def read_jsonl(path: Path) -> tuple[str, list[EvalItem]]:
    """Every item of a HumanEval infilling or own-format jsonl file; the kind is decided by the first record."""
    kind: str | None = None
    items: list[EvalItem] = []
    try:
        for lineno, line in _lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not JSON: {e}") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}:{lineno}: expected an object, got {_JSON_TYPES.get(type(rec), '?')}")
            if kind is None:
                kind = _kind(rec, path, lineno)
            elif _kind_of(rec) not in (None, kind):  # else the message would blame a field of the other kind
                raise DatasetError(f"{path}:{lineno}: a {_kind_of(rec)} record in a file of {kind} records")
            items.append(_humaneval(rec, path, lineno) if kind == "humaneval" else _own(rec, path, lineno))
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a .gz whose compressed data is damaged
        raise DatasetError(f"cannot read dataset {path}: {e}") from None
    if not items:
        raise DatasetError(f"dataset {path} holds no items")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{path}: duplicate id {dup!r}")
    log.info("%s: %d %s items", path, len(items), kind)
    return kind or "own", items


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}  # fmt: skip


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a .jsonl / .jsonl.gz file. Read as bytes and decoded line by line, so a byte that
    is not UTF-8 is reported with its line; a leading byte-order mark (Windows editors write one) is dropped."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                hint = " (a gzip file? name it .jsonl.gz)" if raw.startswith(b"\x1f\x8b") else ""
                raise DatasetError(
                    f"{path}:{lineno}: not UTF-8 text: byte {raw[e.start]:#04x} at byte {e.start + 1} of the line{hint}"
                ) from None


def _kind_of(rec: dict) -> str | None:
    """humaneval or own when `rec` has every field of that kind, else None."""
    if all(k in rec for k in HUMANEVAL_FIELDS):
        return "humaneval"
    if all(k in rec for k in OWN_FIELDS):
        return "own"
    return None


def _kind(rec: dict, path: Path, lineno: int) -> str:
    kind = _kind_of(rec)
    if kind is not None:
        return kind
    raise DatasetError(
        f"{path}:{lineno}: unknown record with fields {sorted(rec)}: expected HumanEval infilling "
        f"({', '.join(HUMANEVAL_FIELDS)}) or our format ({', '.join(OWN_FIELDS)}; see kvblend/eval/FORMAT.md)"
    )


def _str_field(rec: dict, key: str, path: Path, lineno: int) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise DatasetError(f"{path}:{lineno}: field {key!r} must be a string, got {value!r:.80}")
    return _check_text(value, f"field {key!r}", path, lineno)


def _check_text(value: str, what: str, path: Path, lineno: int) -> str:
    """`value` when it is valid Unicode. JSON's `\\ud800` escapes decode to lone surrogates, which no file
    and no tokenizer accepts: refused here, with the line, rather than mid-run."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DatasetError(
            f"{path}:{lineno}: {what} holds a lone surrogate {value[e.start]!r} at index {e.start} (not valid Unicode)"
        ) from None
    return value


def _humaneval(rec: dict, path: Path, lineno: int) -> EvalItem:
    task = _str_field(rec, "task_id", path, lineno)
    return EvalItem(
        id=task,
        path=re.sub(r"[^A-Za-z0-9_.-]+", "_", task) + ".py",
        prefix=_str_field(rec, "prompt", path, lineno),
        suffix=_str_field(rec, "suffix", path, lineno),
        middle=_str_field(rec, "canonical_solution", path, lineno),
    )


def _context_paths_problem(files: dict[str, str]) -> str | None:
    """What keeps `files` from being written as one workspace, or None. Checked here so that the message names
    the line, not a temporary directory after the model has loaded."""
    seen: dict[tuple[str, ...], str] = {}
    for k in files:
        parts = tuple(p for p in k.split("/") if p not in ("", "."))  # "./a.py" and "a//b.py" are fine
        if k.startswith("/") or ".." in parts or not parts:
            return f"context_files path {k!r} must name a file in the workspace (relative, without '..')"
        if parts in seen:
            return f"context_files paths {seen[parts]!r} and {k!r} name the same file"
        seen[parts] = k
    for parts, k in seen.items():
        for i in range(1, len(parts)):
            if parts[:i] in seen:
                return f"context_files path {seen[parts[:i]]!r} is a file, but {k!r} needs it as a directory"
    return None


def _own(rec: dict, path: Path, lineno: int) -> EvalItem:
    item_id = _str_field(rec, "id", path, lineno)
    doc = rec.get("path", re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id) + ".py")
    if not isinstance(doc, str) or not doc or doc.startswith("/") or ".." in doc.split("/"):
        raise DatasetError(f"{path}:{lineno}: field 'path' must be a relative posix path, got {doc!r}")
    _check_text(doc, "field 'path'", path, lineno)
    files = rec.get("context_files")
    if files is not None:
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise DatasetError(f"{path}:{lineno}: field 'context_files' must map paths to texts, got {files!r:.80}")
        for k, v in files.items():
            _check_text(k, "a context_files path", path, lineno)
            _check_text(v, f"context_files[{k!r}]", path, lineno)
        problem = _context_paths_problem(files)
        if problem:
            raise DatasetError(f"{path}:{lineno}: {problem}")
    repo = rec.get("repo")
    if repo is not None:
        if not isinstance(repo, str):
            raise DatasetError(f"{path}:{lineno}: field 'repo' must be a path string, got {repo!r}")
        root = (path.parent / repo).resolve()
        if not root.is_dir():
            raise DatasetError(f"{path}:{lineno}: repo {repo!r} is not a directory ({root})")
        repo = str(root)
    if repo is not None and files:
        raise DatasetError(f"{path}:{lineno}: give 'repo' or 'context_files', not both")
    return EvalItem(
        id=item_id,
        path=doc,
        prefix=_str_field(rec, "prefix", path, lineno),
        suffix=_str_field(rec, "suffix", path, lineno),
        middle=_str_field(rec, "middle", path, lineno),
        repo=repo,
        context_files=dict(files) if files else None,
    )
