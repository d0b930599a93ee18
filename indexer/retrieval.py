"""Pick the context chunks for one completion request under a token budget.

Signals, strongest first: chunks of files the current file imports, of open files, of recently edited
files, identifier overlap with the text around the cursor (BM25), the README, recent commits. Chunks are
taken by score until the budget is spent, near-duplicates (same body, or >= `dup_jaccard` overlap of token
5-grams with a chunk already taken) are dropped, and the result is ordered least relevant first, so the most
relevant chunk sits right before the local prompt. Ties break on (path, line): the order is deterministic.

`Retriever.select` keeps an index of the chunk list it was last given (`ChunkIndex`: BM25 postings, chunks by
path) and scores exactly only the chunks the picking reaches; `select_reference` scores every chunk in Python
and picks the same chunks in the same order (the tests compare the two).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import math
import operator
import posixpath
import re
import threading
from collections.abc import Sequence

import numpy as np

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
        for level, mod in _python_modules(text):
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


# The lines that can hold an import statement, with the continuation lines of a parenthesized name list (closed
# or not yet) and of backslashes: a file whose such lines did not change imports what it imported before.
_PY_IMPORT_LINES = re.compile(r"^[ \t]*(?:from|import)\b(?:[^\n(\\]|\\\n|\([^)]*\)?)*", re.M)
_MODULES: collections.OrderedDict[str, list[tuple[int, str]]] = collections.OrderedDict()
_MODULES_LOCK = threading.Lock()
_MODULES_KEPT = 64


def _python_modules(text: str) -> list[tuple[int, str]]:
    """(level, module) pairs of a Python file's imports: from `ast`, or line by line when the file does not parse.
    Remembered by the file's import lines, so that a request after a keystroke in a function body does not parse
    the whole file again (`ast` of a 90 KB file: ~26 ms of every request that missed the retrieval cache)."""
    key = "\n".join(_PY_IMPORT_LINES.findall(text))
    with _MODULES_LOCK:
        known = _MODULES.get(key)
        if known is not None:
            _MODULES.move_to_end(key)
            return known
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
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
    with _MODULES_LOCK:
        _MODULES[key] = modules
        while len(_MODULES) > _MODULES_KEPT:
            _MODULES.popitem(last=False)
    return modules


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


class ChunkIndex:
    """What retrieval reads of one chunk list, built once and reused by every request on the same list: BM25
    postings (term -> positions of the chunks holding it, with counts), chunks by path, token counts. A request
    then touches only the chunks that hold one of its terms or have a path signal, in numpy, instead of every
    chunk of the workspace in Python (20,000 chunks: ~250 ms a request)."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)
        self.n_tokens = np.array([ch.n_tokens for ch in self.chunks], dtype=np.int64)
        self.total_tokens = int(self.n_tokens.sum())
        self.by_path: dict[str, list[int]] = {}
        for i, ch in enumerate(self.chunks):
            self.by_path.setdefault(ch.path, []).append(i)
        self.known = set(self.by_path)
        self.path_ids = {p: j for j, p in enumerate(self.by_path)}
        self.path_of = np.array([self.path_ids[ch.path] for ch in self.chunks], dtype=np.int64)
        self.readme = np.array([_is_readme(ch) for ch in self.chunks], dtype=bool)
        self.commits = [i for i, ch in enumerate(self.chunks) if ch.kind == "commit"]
        self.vocab: dict[str, int] = {}  # term -> id; postings of term id j: [bounds[j], bounds[j + 1])
        terms = [ch.terms for ch in self.chunks]
        ids = np.array([self.vocab.setdefault(t, len(self.vocab)) for ts in terms for t in ts], dtype=np.int64)
        tfs = np.array([tf for ts in terms for tf in ts.values()], dtype=np.float64)
        at = np.repeat(np.arange(len(self.chunks)), [len(ts) for ts in terms])
        by_term = np.argsort(ids, kind="stable")  # grouped by term, chunk order within a term
        self.post_at, self.post_tf = at[by_term], tfs[by_term]
        self.bounds = np.concatenate(([0], np.cumsum(np.bincount(ids, minlength=len(self.vocab)))))

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions, counts) of the chunks holding `term`, in chunk order."""
        j = self.vocab[term]
        lo, hi = self.bounds[j], self.bounds[j + 1]
        return self.post_at[lo:hi], self.post_tf[lo:hi]

    def same_list(self, chunks: Sequence[Chunk]) -> bool:
        """Whether `chunks` holds the very chunk objects this index was built from, in the same order."""
        return len(chunks) == len(self.chunks) and all(map(operator.is_, chunks, self.chunks))


class Retriever:
    def __init__(self, cfg: RetrievalConfig | None = None) -> None:
        self.cfg = cfg or RetrievalConfig()
        self._index: ChunkIndex | None = None  # of the last chunk list `select` was given

    def _bm25(self, chunks: list[Chunk], query: set[str]) -> list[float]:
        if not query or not chunks:
            return [0.0] * len(chunks)
        n = len(chunks)
        df: dict[str, int] = {}
        for ch in chunks:
            for t in query.intersection(ch.terms):
                df[t] = df.get(t, 0) + 1
        avg = sum(ch.n_tokens for ch in chunks) / n
        return [self._bm25_one(ch, query, df, n, avg) for ch in chunks]

    def _bm25_one(self, ch: Chunk, query: set[str], df: dict[str, int], n: int, avg: float) -> float:
        c, terms = self.cfg, []
        for t in query.intersection(ch.terms):
            tf = ch.terms[t]
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            norm = c.bm25_k1 * (1 - c.bm25_b + c.bm25_b * ch.n_tokens / avg)
            terms.append(idf * tf * (c.bm25_k1 + 1) / (tf + norm))
        # fsum: exact, so the score does not depend on the set's order (string hashes change per process,
        # and a sum in another order differs in the last bits: ties broke differently after a restart)
        return math.fsum(terms)

    def _signals(self, pool: Sequence[Chunk], req: RetrievalRequest, known: set[str]) -> _Signals:
        recent = {p: 1.0 - i / max(len(req.recent_paths), 1) for i, p in enumerate(req.recent_paths)}
        commit_rank: dict[str, int] = {}
        for ch in pool:
            if ch.kind == "commit":
                commit_rank.setdefault(ch.path, len(commit_rank))
        return _Signals(imported_paths(req.path, req.text, known), set(req.open_paths), recent, commit_rank)

    def _combine(self, ch: Chunk, b: float, top: float, sig: _Signals) -> float:
        """A chunk's score from its BM25 `b` (the best chunk's: `top`) and its path signals."""
        c = self.cfg
        s = c.w_bm25 * b / top
        s += c.w_import * (ch.path in sig.imports) + c.w_open * (ch.path in sig.open_paths)
        s += c.w_recent * sig.recent.get(ch.path, 0.0)
        s += c.w_readme * _is_readme(ch)
        if ch.kind == "commit":
            s += c.w_commit * (1.0 - sig.commit_rank[ch.path] / max(len(sig.commit_rank), 1))
        return s

    def score(self, chunks: list[Chunk], req: RetrievalRequest) -> list[float]:
        """One relevance score per chunk (same order): the plain reference `select` ranks by."""
        sig = self._signals(chunks, req, {ch.path for ch in chunks})
        bm25 = self._bm25(chunks, _query(self.cfg, req))
        top = max(bm25, default=0.0) or 1.0
        return [self._combine(ch, b, top, sig) for ch, b in zip(chunks, bm25, strict=True)]

    def select(self, chunks: list[Chunk], req: RetrievalRequest, budget_tokens: int | None = None) -> list[Chunk]:
        """The chunks for `req`, within `budget_tokens` (default: the config's), least relevant first. The same
        as `select_reference`, from an index of `chunks` kept for the next request on the same list."""
        budget = self.cfg.budget_tokens if budget_tokens is None else budget_tokens
        if self._index is None or not self._index.same_list(chunks):
            self._index = ChunkIndex(chunks)
        picker = self._select_indexed(self._index, req, budget)
        return picker.result() if picker is not None else self.select_reference(chunks, req, budget)

    def select_reference(self, chunks: list[Chunk], req: RetrievalRequest, budget: int) -> list[Chunk]:
        """`select` by scoring every chunk in Python (what it falls back to when numpy cannot bound the scores:
        inf or nan weights)."""
        pool = [ch for ch in chunks if self.cfg.include_current_file or ch.path != req.path]
        scores = self.score(pool, req)
        picker = _Picker(self.cfg, budget)
        for s, ch in sorted(zip(scores, pool, strict=True), key=lambda sc: (-sc[0], sc[1].path, sc[1].start_line)):
            picker.offer(s, ch)
        return picker.result()

    def _select_indexed(self, index: ChunkIndex, req: RetrievalRequest, budget: int) -> _Picker | None:
        """`select`'s picks in the reference's order, scoring exactly only the chunks the picking reaches.
        numpy scores every chunk with a signal approximately (BM25 summed in any order); chunks whose approximate
        scores are within 2 x `margin` of each other form a group, ordered by their exact scores when the picking
        reaches it (each approximation is within `margin` of the exact score, so groups keep the exact order)."""
        c, chunks = self.cfg, index.chunks
        excluded = [] if c.include_current_file else index.by_path.get(req.path, [])
        n = len(chunks) - len(excluded)
        picker = _Picker(c, budget)
        if n == 0:
            return picker
        in_pool = np.ones(len(chunks), dtype=bool)
        in_pool[excluded] = False
        pool_commits = [chunks[i] for i in index.commits if in_pool[i]]
        sig = self._signals(pool_commits, req, index.known)  # known: the current file is never its own import
        query = _query(c, req)
        df = {t: len(index.postings(t)[0]) for t in query if t in index.vocab}
        for i in excluded:
            for t in query.intersection(chunks[i].terms):
                df[t] -= 1
        df = {t: d for t, d in df.items() if d > 0}
        avg = (index.total_tokens - sum(chunks[i].n_tokens for i in excluded)) / n
        norm = c.bm25_k1 * (1 - c.bm25_b + c.bm25_b * index.n_tokens / avg)
        post, none = [index.postings(t) for t in df], [np.zeros(0)]
        at = np.concatenate([p[0] for p in post] + [np.zeros(0, dtype=np.int64)])
        tf = np.concatenate([p[1] for p in post] + none)
        idfs = (math.log(1 + (n - d + 0.5) / (d + 0.5)) for d in df.values())
        idf = np.concatenate([np.full(len(p[0]), x) for p, x in zip(post, idfs, strict=True)] + none)
        parts = idf * tf * (c.bm25_k1 + 1) / (tf + norm[at])  # each term's share, as `_bm25_one` computes it
        bm25 = np.bincount(at, weights=parts, minlength=len(chunks)) * in_pool
        hit = np.bincount(at, minlength=len(chunks)) > 0
        top = 1.0
        if bm25.max(initial=0.0) > 0:  # the best chunk's exact score, from those that may be the best
            best = np.flatnonzero(bm25 >= bm25.max() * (1 - 1e-9))
            top = max(self._bm25_one(chunks[i], query, df, n, avg) for i in best) or 1.0
        flags = np.zeros((3, len(index.path_ids)))  # per path: imported, open, recent
        for row, paths in enumerate((sig.imports, sig.open_paths)):
            flags[row, [index.path_ids[p] for p in paths if p in index.path_ids]] = 1.0
        for p, r in sig.recent.items():
            if p in index.path_ids:
                flags[2, index.path_ids[p]] = r
        per = flags[:, index.path_of]
        commit = np.zeros(len(chunks))  # > 0 for every commit in the pool
        for i in index.commits:
            if in_pool[i]:
                commit[i] = 1.0 - sig.commit_rank[chunks[i].path] / max(len(sig.commit_rank), 1)
        approx = c.w_bm25 * bm25 / top + c.w_import * per[0] + c.w_open * per[1] + c.w_recent * per[2]
        approx += c.w_readme * index.readme + c.w_commit * commit
        # a chunk without any signal scores exactly 0 and is never picked
        has_signal = hit | (per > 0).any(axis=0) | index.readme | (commit > 0)
        cand = np.flatnonzero(in_pool & has_signal & (index.n_tokens <= budget))
        if not np.isfinite(approx[cand]).all():
            return None
        order = cand[np.argsort(-approx[cand], kind="stable")]
        values = approx[order]
        # every term of a score is at most its weight (BM25 over the best's is <= 1): the rounding of a score, and
        # of its approximation, is ~1e-15 of the weights' sum
        weights = (c.w_bm25, c.w_import, c.w_open, c.w_recent, c.w_readme, c.w_commit)
        margin = 1e-9 * max(1.0, math.fsum(abs(w) for w in weights))
        starts = np.flatnonzero(np.concatenate(([True], values[:-1] - values[1:] > 2 * margin)))
        group_end = np.append(starts[1:], len(order)).repeat(np.diff(np.append(starts, len(order))))
        ntok, order_l, group_end_l = index.n_tokens.tolist(), order.tolist(), group_end.tolist()
        least = int(index.n_tokens[order].min(initial=0))
        k = 0
        while k < len(order_l) and budget - picker.used >= least:
            i = order_l[k]
            if ntok[i] > budget - picker.used:
                k += 1
                continue
            members = [j for j in order_l[k : group_end_l[k]] if ntok[j] <= budget - picker.used]
            exact = [(self._combine(chunks[j], self._bm25_one(chunks[j], query, df, n, avg), top, sig), j)
                     for j in members]  # fmt: skip
            exact.sort(key=lambda e: (-e[0], chunks[e[1]].path, chunks[e[1]].start_line, e[1]))
            for s, j in exact:
                picker.offer(s, chunks[j])
            k = group_end_l[k]
        return picker


@dataclasses.dataclass
class _Signals:
    imports: set[str]
    open_paths: set[str]
    recent: dict[str, float]  # path -> 1 for the most recent, down to 1/len
    commit_rank: dict[str, int]  # commit path -> 0 for the newest


class _Picker:
    """Takes ranked chunks while the budget lasts, dropping near-duplicates."""

    def __init__(self, cfg: RetrievalConfig, budget: int) -> None:
        self.cfg, self.budget, self.used = cfg, budget, 0
        self.picked: list[tuple[float, Chunk]] = []
        self.seen_bodies: set[str] = set()
        self.sizes: list[int] = []  # shingles of each pick
        self.holders: dict[tuple[int, ...], list[int]] = {}  # shingle -> the picks holding it

    def offer(self, s: float, ch: Chunk) -> None:
        if s <= 0 or self.used + ch.n_tokens > self.budget or ch.text_hash in self.seen_bodies:
            return
        sh = _shingles(ch.tokens)
        if self.near_duplicate(sh):
            return
        for x in sh:
            self.holders.setdefault(x, []).append(len(self.sizes))
        self.sizes.append(len(sh))
        self.picked.append((s, ch))
        self.seen_bodies.add(ch.text_hash)
        self.used += ch.n_tokens

    def near_duplicate(self, sh: set[tuple[int, ...]]) -> bool:
        """Whether shingles `sh` overlap a pick's by Jaccard >= dup_jaccard. The shingles shared with each pick are
        counted through `holders`, not by intersecting `sh` with every pick (a 24k-token budget of a 32k-window
        model picks ~100 chunks: ~5,000 set intersections per request)."""
        shared = collections.Counter(k for x in sh for k in self.holders.get(x, ()))
        return any(n / (len(sh) + self.sizes[k] - n) >= self.cfg.dup_jaccard for k, n in shared.items())

    def result(self) -> list[Chunk]:
        """The picked chunks, least relevant first."""
        picked = sorted(self.picked, key=lambda sc: (sc[0], sc[1].path, sc[1].start_line))
        return [ch for _, ch in picked]


def _query(c: RetrievalConfig, req: RetrievalRequest) -> set[str]:
    lo = max(0, req.cursor - c.window_chars)
    return set(_IDENT.findall(req.text[lo : req.cursor + c.window_chars // 4]))


def _is_readme(ch: Chunk) -> bool:
    return ch.kind == "markdown" and posixpath.basename(ch.path).lower().startswith("readme")
