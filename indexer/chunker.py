"""Split files into chunks of at most N tokens, each rendered as `<|file_sep|>path\\n<text>` and tokenized alone.

Units first, then packing:
- Python: one unit per top-level definition (decorators and the comment block above it included) and one
  per run of other top-level statements, from `ast`; a file that does not parse falls back to the heuristic.
- Other code: a unit starts at a non-indented line after a blank line (closing brackets stay with their block).
- Markdown: a unit per heading (outside fenced code).
Blank lines before a unit belong to it, so appending to a file never changes its last chunk.
A unit under `min_chunk_tokens` joins the next one (so an import block does not pay a header of its own);
one over the limit is split between lines, preferring blank lines. A chunk's identity is hash(model
fingerprint, its tokens), so a unit that did not change keeps its key wherever it moves in the file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import logging
import math
import re

import numpy as np

from blend.tokenizer import FILE_SEP, Tokenizer
from indexer.keys import ChunkKey, chunk_key

log = logging.getLogger(__name__)

KINDS = ("code", "markdown", "commit")
MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdx", ".rst")
_HEADING = re.compile(r"^#{1,6}\s")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CLOSER = re.compile(r"^[\)\]\}]|^end\b|^fi\b|^done\b|^esac\b")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclasses.dataclass(frozen=True)
class Chunk:
    path: str  # workspace-relative posix path (commits: .git/commits/<sha12>)
    kind: str  # code | markdown | commit
    start_line: int  # 1-based, inclusive (commits: 0)
    end_line: int
    text: str  # rendered: header + body, exactly what `tokens` encode
    tokens: tuple[int, ...]
    key: ChunkKey
    text_hash: str  # blake2b of the body, for near-duplicate removal and change checks

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def terms(self) -> dict[str, int]:
        """Identifier -> count in the body (retrieval's BM25)."""
        counts: dict[str, int] = {}
        for m in _IDENT.finditer(self.text[self.text.index("\n") + 1 :]):
            counts[m.group()] = counts.get(m.group(), 0) + 1
        return counts


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def header(path: str) -> str:
    return f"{FILE_SEP}{path}\n"


def kind_of(path: str) -> str:
    return "markdown" if path.lower().endswith(MARKDOWN_EXTENSIONS) else "code"


class Chunker:
    def __init__(
        self,
        tokenizer: Tokenizer,
        fingerprint: str,
        max_tokens: int = 512,
        min_tokens: int = 48,
        prefix: tuple[int, ...] = (),
    ) -> None:
        self.tok = tokenizer
        self.fingerprint = fingerprint
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.prefix = prefix  # token ids of the shared prefix chunks are precomputed behind (part of the key)
        self._unit_tokens: dict[tuple[int, int], int] = {}  # (first, end line) -> tokens, of the file being split

    def make(self, path: str, kind: str, body: str, start_line: int, end_line: int) -> Chunk:
        return self._chunk(path, kind, body, start_line, end_line, tuple(self.tok.encode(header(path) + body)))

    def _chunk(self, path: str, kind: str, body: str, start_line: int, end_line: int, tokens: tuple) -> Chunk:
        """The chunk of `body`, whose rendered text (header + body) tokenizes to `tokens`."""
        key = chunk_key(self.fingerprint, tokens, self.prefix)
        return Chunk(path, kind, start_line, end_line, header(path) + body, tokens, key, text_hash(body))

    def chunk_file(self, path: str, text: str) -> list[Chunk]:
        """All chunks of one file, in file order; [] for an empty or all-blank file."""
        lines = text.splitlines(keepends=True)
        if not any(line.strip() for line in lines):
            return []
        kind = kind_of(path)
        if kind == "markdown":
            starts = markdown_starts(lines)
        elif path.endswith((".py", ".pyi")):
            starts = python_starts(text, lines)
            if starts is None:
                log.debug("%s does not parse; chunking it by indentation", path)
                starts = heuristic_starts(lines)
        else:
            starts = heuristic_starts(lines)
        spans = _spans(starts, len(lines))
        budget = self.max_tokens - len(self.tok.encode(header(path)))
        if budget < 8:
            raise ValueError(f"path {path!r} leaves no room in a {self.max_tokens}-token chunk")
        cut = _FileIds.of(self.tok, text, lines, self._max_chars(budget))
        counts = cut.line_counts if cut is not None else self._line_counts(lines, budget)
        spans = self._merge_small(counts, spans, budget)
        pieces = [p for a, b in spans for p in self._split(lines, counts, a, b, budget)]
        merged: list[tuple[int, int]] = []
        for s, e in pieces:  # blank-only pieces join the next piece (the last one: the previous)
            if merged and not "".join(lines[merged[-1][0] : merged[-1][1]]).strip():
                s = merged.pop()[0]
            merged.append((s, e))
        if len(merged) > 1 and not "".join(lines[merged[-1][0] : merged[-1][1]]).strip():
            s, e = merged.pop()
            merged[-1] = (merged[-1][0], e)
        bodies = ["".join(lines[s:e]) for s, e in merged]
        texts = [header(path) + body for body in bodies]
        may_fit = [len(t) <= self._max_chars(self.max_tokens) for t in texts]
        pairs = zip(merged, may_fit, strict=True)
        cuts = [cut.ids(header(path), s, e) if cut is not None and f else None for (s, e), f in pairs]
        ids = iter(self.tok.encode_batch([t for t, f, c in zip(texts, may_fit, cuts, strict=True) if f and c is None]))
        chunks = []
        for (s, e), body, f, c in zip(merged, bodies, may_fit, cuts, strict=True):
            tokens = c() if c is not None else next(ids) if f else None
            if tokens is not None and len(tokens) <= self.max_tokens:
                chunks.append(self._chunk(path, kind, body, s + 1, e, tuple(tokens)))
            else:
                chunks += self._fit(path, kind, body, s + 1, e, tokens)
        return chunks

    def _max_chars(self, n_tokens: int) -> float:
        """Characters beyond which a text holds more than `n_tokens` tokens for sure (inf when the tokenizer gives
        no bound): a minified 400 KB line used to be tokenized whole at every halving of `_fit`."""
        bound = self.tok.max_token_bytes
        return math.inf if bound is None else n_tokens * bound

    # -- packing -------------------------------------------------------------------------------

    def _line_counts(self, lines: list[str], budget: int) -> np.ndarray:
        """Tokens of each line, every line tokenized on its own, all in one batch. Sums over lines are the packing
        estimates (BPE is nearly additive at line breaks; `_fit` catches the rare excess), and an edit changes
        the counts of the lines it touches only. A line longer than `_max_chars(budget)` counts budget + 1 without
        being tokenized: any count over the budget packs it the same way (alone, then split by `_fit`)."""
        limit = self._max_chars(budget)
        if max(map(len, lines), default=0) <= limit:
            return np.array([len(ids) for ids in self.tok.encode_batch(lines)], dtype=np.int64)
        short = [i for i, line in enumerate(lines) if len(line) <= limit]
        counts = np.full(len(lines), budget + 1, dtype=np.int64)
        counts[short] = [len(ids) for ids in self.tok.encode_batch([lines[i] for i in short])]
        return counts

    def _merge_small(self, counts: np.ndarray, spans: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
        """Join units under min_tokens to the next one (as long as the join fits the budget)."""
        out: list[tuple[int, int, int]] = []
        carry: tuple[int, int, int] | None = None
        for a, b in spans:
            n = int(counts[a:b].sum())
            if carry is not None:
                if carry[2] + n <= budget:
                    a, n = carry[0], carry[2] + n
                else:
                    out.append(carry)
                carry = None
            if n < self.min_tokens:
                carry = (a, b, n)
            else:
                out.append((a, b, n))
        if carry is not None:
            if out and out[-1][2] + carry[2] <= budget:
                out[-1] = (out[-1][0], carry[1], out[-1][2] + carry[2])
            else:
                out.append(carry)
        self._unit_tokens = {(a, b): n for a, b, n in out}
        return [(a, b) for a, b, _ in out]

    def _split(self, lines: list[str], counts: np.ndarray, a: int, b: int, budget: int) -> list[tuple[int, int]]:
        """Split lines[a:b] into spans of at most ~budget tokens, preferring to cut after a blank line."""
        if self._unit_tokens.get((a, b), budget + 1) <= budget:
            return [(a, b)]
        out, start, used, last_blank = [], a, 0, None
        for i in range(a, b):
            n = int(counts[i])
            if used + n > budget and i > start:
                cut = last_blank + 1 if last_blank is not None and last_blank + 1 - start > (i - start) // 2 else i
                out.append((start, cut))
                start, last_blank = cut, None
                used = int(counts[start:i].sum())
            used += n
            if not lines[i].strip():
                last_blank = i
        out.append((start, b))
        return out

    def _fit(
        self, path: str, kind: str, body: str, start_line: int, end_line: int, tokens: list[int] | None = None
    ) -> list[Chunk]:
        """One chunk, or several when the rendered text still exceeds the limit (BPE is not additive over
        lines, and a single line can be longer than the budget): halve by lines, then by characters. `tokens`:
        the rendered text's ids when known already; a text too long to fit is halved without tokenizing it."""
        text = header(path) + body
        if tokens is None and len(text) <= self._max_chars(self.max_tokens):
            tokens = self.tok.encode(text)
        if tokens is not None and len(tokens) <= self.max_tokens:
            return [self._chunk(path, kind, body, start_line, end_line, tuple(tokens))]
        lines = body.splitlines(keepends=True)
        if len(lines) > 1:
            mid = len(lines) // 2
            top, bottom = "".join(lines[:mid]), "".join(lines[mid:])
            return self._fit(path, kind, top, start_line, start_line + mid - 1) + self._fit(
                path, kind, bottom, start_line + mid, end_line
            )
        mid = len(body) // 2
        return self._fit(path, kind, body[:mid], start_line, end_line) + self._fit(
            path, kind, body[mid:], start_line, end_line
        )


class _FileIds:
    """One tokenization of a whole file, out of which its chunks' ids are cut: the same ids as tokenizing each
    chunk on its own, for about half the tokenizing (README). A line offers a cut where the split before a token
    is forced whatever follows (`Tokenizer.cuts_at_lines`); the ids of a text cut there are then those of its two
    parts tokenized on their own:
    - a line that starts with printable ASCII after a "\\n": the cut is at its start, and the first part is
      tokenized with that character appended (its one token dropped: a run of blank lines before it splits
      otherwise at the end of a text than before a character);
    - a line indented by spaces, then printable ASCII: the cut is before its last space, which starts a token
      with what follows (" def"), and the whitespace before it ends there either way.
    So a chunk (header + lines s..e) takes the header and its lines up to its first cut tokenized on their own,
    then the file's ids up to its last cut, then the rest tokenized on its own: the short pieces of all chunks go
    to the tokenizer in one batch (`ids` defers them)."""

    def __init__(self, tok: Tokenizer, lines: list[str], ids: np.ndarray, sizes: np.ndarray, line_start: np.ndarray):
        self.tok, self.lines = tok, lines
        self.file_ids = ids
        self.token_start = np.cumsum(sizes) - sizes  # byte offset of each token (`sizes`: its bytes)
        self.line_start = line_start  # byte offset of each line, then the file's length
        line_of = np.searchsorted(line_start, self.token_start, side="right") - 1
        self.line_counts = np.bincount(line_of, minlength=len(lines))[: len(lines)]  # tokens starting on each line
        added = tok.added_texts
        self.cut = [_cut(lines, i, added) for i in range(len(lines))]  # (chars into the line, appended?) or None
        self._pending: list[str] = []  # the pieces to tokenize
        self._done: list[list[int]] | None = None

    @classmethod
    def of(cls, tok: Tokenizer, text: str, lines: list[str], max_line_chars: float) -> _FileIds | None:
        """The file's ids, or None where chunks must be tokenized one by one (`Tokenizer.can_cut`), or where a line
        is too long to tokenize (`Chunker._line_counts`)."""
        if not tok.can_cut(text) or max(map(len, lines), default=0) > max_line_chars:
            return None
        ids = np.asarray(tok.encode_batch([text])[0], dtype=np.int64)
        # (text the tokenizer took holds no lone surrogate)
        utf8 = [len(line) for line in lines] if text.isascii() else [len(line.encode("utf-8")) for line in lines]
        line_start = np.concatenate([[0], np.cumsum(utf8, dtype=np.int64)])
        sizes = tok.token_bytes[ids]
        if int(sizes.sum()) != line_start[-1]:  # not the file's bytes (a normalizer at work)
            return None
        return cls(tok, lines, ids, sizes, line_start)

    def _token_at(self, i: int) -> int | None:
        """Index of the file's token starting at line i's cut (None: none starts there, which a cut rules out;
        the cut's characters are ASCII spaces, one byte each)."""
        at_byte = self.line_start[i] + self.cut[i][0]
        at = int(np.searchsorted(self.token_start, at_byte))
        return at if at < len(self.file_ids) and self.token_start[at] == at_byte else None

    def ids(self, head: str, s: int, e: int):
        """A callable giving the ids of `head` + lines[s:e] once `_done` (the first call tokenizes every pending
        piece in one batch), or None where the chunk has no two cuts to cut at (it is tokenized whole)."""
        first = next((i for i in range(s, e) if self.cut[i] is not None), None)
        # the last cut must be inside the chunk, unless the chunk ends the file: a text's end reads differently
        # from the line that follows it in the file
        last = e if e == len(self.lines) else next((i for i in range(e - 1, s, -1) if self.cut[i] is not None), None)
        if first is None or last is None or last <= first or not head.endswith("\n"):
            return None
        a, b = self._token_at(first), self._token_at(last) if last < len(self.lines) else len(self.file_ids)
        if a is None or b is None:
            return None
        (k, append), n = self.cut[first], len(self._pending)
        line = self.lines[first]
        self._pending.append(head + "".join(self.lines[s:first]) + (line[0] if append else line[:k]))
        if last < e:
            self._pending.append(self.lines[last][self.cut[last][0] :] + "".join(self.lines[last + 1 : e]))
        middle = self.file_ids[a:b].tolist()

        def get() -> list[int] | None:
            if self._done is None:
                self._done = self.tok.encode_batch(self._pending)
            prefix, suffix = self._done[n], self._done[n + 1] if last < e else []
            if append:
                if not prefix or self.tok.token_bytes[prefix[-1]] != 1:  # the character is not one token
                    return None
                prefix = prefix[:-1]
            return prefix + middle + suffix

        return get


def _cut(lines: list[str], i: int, added: tuple[str, ...]) -> tuple[int, bool] | None:
    """Line i's cut (`_FileIds`): (characters into the line, whether the first part takes the next character), or
    None. A line after one that does not end in "\\n" (another line break, or none) offers none, nor one whose
    text starts with an added token's (`<|file_sep|>`: the text before it is split as a text's end)."""
    line = lines[i]
    if i > 0 and not lines[i - 1].endswith("\n"):
        return None
    k = len(line) - len(line.lstrip(" "))
    if not "!" <= line[k : k + 1] <= "~" or line.startswith(added, k):
        return None
    return (0, True) if k == 0 else (k - 1, False)


def _spans(starts: list[int], n_lines: int) -> list[tuple[int, int]]:
    bounds = sorted({0, *[s for s in starts if 0 < s < n_lines], n_lines})
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def python_starts(text: str, lines: list[str]) -> list[int] | None:
    """0-based first lines of the top-level units of a Python file, or None when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    starts = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        while start > 0 and lines[start - 1].lstrip().startswith("#"):  # the comment block above it
            start -= 1
        starts += [_with_blanks(lines, start), node.end_lineno or start + 1]  # the def, and what follows it
    return starts


def _with_blanks(lines: list[str], i: int) -> int:
    """Blank lines before a unit belong to it: appending a unit at the end of a file leaves the last one as is."""
    while i > 0 and not lines[i - 1].strip():
        i -= 1
    return i


def heuristic_starts(lines: list[str]) -> list[int]:
    starts = []
    for i, line in enumerate(lines):
        top_level = line.strip() and not line[0].isspace() and not _CLOSER.match(line)
        if top_level and (i == 0 or not lines[i - 1].strip()):
            starts.append(_with_blanks(lines, i))
    return starts


def markdown_starts(lines: list[str]) -> list[int]:
    starts, fenced = [], False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _HEADING.match(line):
            starts.append(_with_blanks(lines, i))
    return starts
