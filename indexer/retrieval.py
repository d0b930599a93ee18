"""Pick the context chunks for one completion request under a token budget.

Signals, strongest first: chunks of files the current file imports, of open files, of recently edited
files, identifier overlap with the text around the cursor (BM25), the README, recent commits. Chunks are
taken by score until the budget is spent, near-duplicates (same body, or >= `dup_jaccard` overlap of token
5-grams with a chunk already taken) are dropped, and the result is ordered least relevant first, so the most
relevant chunk sits right before the local prompt. Ties break on (path, line): the order is deterministic.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import posixpath
import re
from collections.abc import Sequence

from indexer.chunker import Chunk

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_JS_IMPORT = re.compile(r"""(?:import\s[^'"]*?from\s*|import\s*|require\(\s*)['"](\.{1,2}/[^'"]+)['"]""")
_JS_EXTS = ("", ".ts", ".tsx", ".js", ".jsx", ".mjs", "/index.ts", "/index.js")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    budget_tokens: int = 4096  # context chunks in total (the local FIM prompt comes on top)
    include_current_file: bool = False  # the local prompt already holds the text around the cursor
    window_chars: int = 4000  # query identifiers come from this much text before (and a quarter after) the cursor
    w_import: float = 8.0
    w_open: float = 4.0
    w_recent: float = 3.0  # scaled by recency rank
    w_bm25: float = 4.0  # scaled to [0, 1] by the best chunk
    w_readme: float = 1.5
    w_commit: float = 1.0  # scaled by recency rank
    dup_jaccard: float = 0.8
    bm25_k1: float = 1.2
    bm25_b: float = 0.75


@dataclasses.dataclass(frozen=True)
class RetrievalRequest:
    path: str  # workspace-relative path of the file being edited
    text: str  # its current text
    cursor: int  # character offset of the cursor in `text`
    open_paths: tuple[str, ...] = ()
    recent_paths: tuple[str, ...] = ()  # most recent first


def imported_paths(path: str, text: str, known: set[str]) -> set[str]:
    """Workspace files `path` imports (Python through `ast`, JS/TS relative imports by pattern)."""
    here = posixpath.dirname(path)
    found: set[str] = set()
    if path.endswith((".py", ".pyi")):
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            tree = None
        modules: list[tuple[int, str]] = []
        for node in ast.walk(tree) if tree is not None else []:
            if isinstance(node, ast.Import):
                modules += [(0, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                modules += [(node.level, base)] + [(node.level, f"{base}.{a.name}".strip(".")) for a in node.names]
        if tree is None:  # code being typed rarely parses: read the import lines one by one
            modules = _python_imports_by_line(text)
        for level, mod in modules:
            root = here
            for _ in range(max(level - 1, 0)):
                root = posixpath.dirname(root)
            rel = mod.replace(".", "/")
            bases = [posixpath.join(root, rel)] if level else [rel, f"src/{rel}"]
            for b in bases:
                for cand in (f"{b}.py", f"{b}/__init__.py"):
                    if cand.strip("/") in known:
                        found.add(cand.strip("/"))
    else:
        for m in _JS_IMPORT.finditer(text):
            b = posixpath.normpath(posixpath.join(here, m.group(1)))
            found.update(b + ext for ext in _JS_EXTS if b + ext in known)
    found.discard(path)
    return found


_PY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(?:\(([\w\s,.]+)\)?|([\w \t,.]+))", re.M)
_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w \t,.]+)$", re.M)


def _python_imports_by_line(text: str) -> list[tuple[int, str]]:
    """(level, module) pairs of the import statements in Python text that does not parse as a whole."""
    modules: list[tuple[int, str]] = []
    for m in _PY_FROM.finditer(text):
        level, base = len(m.group(1)), m.group(2)
        names = [n.split(" as ")[0].strip() for n in (m.group(3) or m.group(4)).split(",")]
        modules += [(level, base)] + [(level, f"{base}.{n}".strip(".")) for n in names if n.isidentifier()]
    for m in _PY_IMPORT.finditer(text):
        modules += [(0, n.split(" as ")[0].strip()) for n in m.group(1).split(",") if n.strip()]
    return modules


def _shingles(tokens: Sequence[int], n: int = 5) -> set[tuple[int, ...]]:
    body = tokens[8:]  # past the `<|file_sep|>path` header, which differs between copies
    return {tuple(body[i : i + n]) for i in range(max(len(body) - n + 1, 1))}


class Retriever:
    def __init__(self, cfg: RetrievalConfig | None = None) -> None:
        self.cfg = cfg or RetrievalConfig()

    def _bm25(self, chunks: list[Chunk], query: set[str]) -> list[float]:
        if not query or not chunks:
            return [0.0] * len(chunks)
        c = self.cfg
        n = len(chunks)
        df: dict[str, int] = {}
        for ch in chunks:
            for t in query.intersection(ch.terms):
                df[t] = df.get(t, 0) + 1
        avg = sum(ch.n_tokens for ch in chunks) / n
        scores = []
        for ch in chunks:
            terms = []
            for t in query.intersection(ch.terms):
                tf = ch.terms[t]
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                norm = c.bm25_k1 * (1 - c.bm25_b + c.bm25_b * ch.n_tokens / avg)
                terms.append(idf * tf * (c.bm25_k1 + 1) / (tf + norm))
            # fsum: exact, so the score does not depend on the set's order (string hashes change per process,
            # and a sum in another order differs in the last bits: ties broke differently after a restart)
            scores.append(math.fsum(terms))
        return scores

    def score(self, chunks: list[Chunk], req: RetrievalRequest) -> list[float]:
        """One relevance score per chunk (same order)."""
        c = self.cfg
        known = {ch.path for ch in chunks}
        imports = imported_paths(req.path, req.text, known)
        lo = max(0, req.cursor - c.window_chars)
        query = set(_IDENT.findall(req.text[lo : req.cursor + c.window_chars // 4]))
        bm25 = self._bm25(chunks, query)
        top = max(bm25, default=0.0) or 1.0
        recent = {p: 1.0 - i / max(len(req.recent_paths), 1) for i, p in enumerate(req.recent_paths)}
        commit_rank = {}
        for ch in chunks:
            if ch.kind == "commit":
                commit_rank.setdefault(ch.path, len(commit_rank))
        scores = []
        for ch, b in zip(chunks, bm25, strict=True):
            s = c.w_bm25 * b / top
            s += c.w_import * (ch.path in imports) + c.w_open * (ch.path in req.open_paths)
            s += c.w_recent * recent.get(ch.path, 0.0)
            s += c.w_readme * (ch.kind == "markdown" and posixpath.basename(ch.path).lower().startswith("readme"))
            if ch.kind == "commit":
                s += c.w_commit * (1.0 - commit_rank[ch.path] / max(len(commit_rank), 1))
            scores.append(s)
        return scores

    def select(self, chunks: list[Chunk], req: RetrievalRequest, budget_tokens: int | None = None) -> list[Chunk]:
        """The chunks for `req`, within `budget_tokens` (default: the config's), least relevant first."""
        budget = self.cfg.budget_tokens if budget_tokens is None else budget_tokens
        pool = [ch for ch in chunks if self.cfg.include_current_file or ch.path != req.path]
        scores = self.score(pool, req)
        ranked = sorted(zip(scores, pool, strict=True), key=lambda sc: (-sc[0], sc[1].path, sc[1].start_line))
        picked: list[tuple[float, Chunk]] = []
        seen_bodies: set[str] = set()
        shingles: list[set] = []
        used = 0
        for s, ch in ranked:
            if s <= 0 or used + ch.n_tokens > budget or ch.text_hash in seen_bodies:
                continue
            sh = _shingles(ch.tokens)
            if any(len(sh & o) / max(len(sh | o), 1) >= self.cfg.dup_jaccard for o in shingles):
                continue
            picked.append((s, ch))
            seen_bodies.add(ch.text_hash)
            shingles.append(sh)
            used += ch.n_tokens
        picked.sort(key=lambda sc: (sc[0], sc[1].path, sc[1].start_line))
        return [ch for _, ch in picked]
