"""Large and unusual inputs: work per request or per file that must not grow with the workspace or the line.

Each test counts operations (chunks read, texts tokenized, nodes visited) rather than timing them, and checks
that the faster path gives what the plain one gives.
"""

import dataclasses
import random

import pytest

from blend.loader import DEFAULT_MODEL_DIR
from blend.tokenizer import Tokenizer
from indexer.chunker import Chunk, Chunker
from indexer.commits import COMMIT_PREFIX
from indexer.retrieval import RetrievalConfig, RetrievalRequest, Retriever


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR)


def _workspace(tok, n_files: int, seed: int) -> list[Chunk]:
    """Small files sharing identifiers, exact and near copies, a README, commits and the current file."""
    rng = random.Random(seed)
    ch = Chunker(tok, "ab" * 16, 128, 8)
    words = [f"name_{i}" for i in range(40)] + ["compute", "scale", "value", "self", "return"]
    files = {}
    for i in range(n_files):
        body = "".join(
            f"def fn_{i}_{j}(x):\n    return {rng.choice(words)}(x, {rng.choice(words)}) + {rng.randint(0, 3)}\n\n"
            for j in range(rng.randint(1, 6))
        )
        files[f"pkg/m{i % 7}/f{i}.py"] = body
        if rng.random() < 0.15:  # an exact copy elsewhere: same scores, ties broken by path
            files[f"copy/f{i}.py"] = body
    files["README.md"] = "# Project\n\nUse compute and scale.\n\n## More\n\nname_3 name_4\n"
    files["pkg/main.py"] = "from pkg.m1 import f1\n\ndef main():\n    return compute(name_1)\n"
    files["pkg/m1/f1.py"] = files.get("pkg/m1/f1.py", "") + "X = 1\n"
    out = [c for path, text in sorted(files.items()) for c in ch.chunk_file(path, text)]
    out += [ch.make(f"{COMMIT_PREFIX}{k:012x}", "commit", f"commit {k}\n\nTouch name_{k} and scale\n", 0, 0)
            for k in range(5)]  # fmt: skip
    return out


def _requests(seed: int) -> list[RetrievalRequest]:
    rng = random.Random(seed)
    text = "import pkg.m1.f1\nfrom pkg.m2 import f2\n\n" + "".join(
        f"y_{i} = compute(name_{rng.randint(0, 39)}, value)\n" for i in range(60)
    )
    reqs = []
    for _ in range(6):
        cursor = rng.randint(0, len(text))
        opened = tuple(f"pkg/m{rng.randint(0, 6)}/f{rng.randint(0, 80)}.py" for _ in range(2))
        recent = tuple(f"pkg/m{rng.randint(0, 6)}/f{rng.randint(0, 80)}.py" for _ in range(3))
        reqs.append(RetrievalRequest("pkg/main.py", text, cursor, opened, recent))
    reqs.append(RetrievalRequest("pkg/m1/f1.py", "", 0))  # no query at all: path signals only
    reqs.append(RetrievalRequest("pkg/main.py", text, len(text), ("README.md",), ("pkg/main.py",)))
    return reqs


CONFIGS = [
    RetrievalConfig(),
    RetrievalConfig(include_current_file=True, w_bm25=1.0, w_open=0.0),
    RetrievalConfig(w_import=-2.0, w_commit=0.0, dup_jaccard=0.5),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_indexed_selection_is_the_reference_selection(tok, seed):
    chunks = _workspace(tok, 300, seed)
    for cfg in CONFIGS:
        r = Retriever(cfg)
        for budget in (40, 700, 3072, 6000):
            for req in _requests(seed):
                want = [c.key for c in r.select_reference(chunks, req, budget)]
                assert [c.key for c in r.select(chunks, req, budget)] == want, (cfg, budget, req.cursor)
    # another list (a file changed): the index is rebuilt, not reused
    r = Retriever()
    req = _requests(seed)[0]
    r.select(chunks, req, 3072)
    fewer = [c for c in chunks if not c.path.startswith("copy/")]
    assert [c.key for c in r.select(fewer, req, 3072)] == [c.key for c in r.select_reference(fewer, req, 3072)]
    assert r.select([], req, 3072) == []


class _CountedChunk(Chunk):
    """A chunk that counts how often retrieval reads its identifiers."""

    reads = 0

    @property
    def terms(self) -> dict[str, int]:
        type(self).reads += 1
        return Chunk.terms.func(self)


def test_a_request_reads_few_chunks_of_a_large_workspace(tok):
    # 20,000 small files: every request scored every chunk in Python (~250 ms); now only the chunks the
    # picking reaches are scored exactly, from an index built once per chunk list
    chunks = [_CountedChunk(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)})
              for c in _workspace(tok, 1500, 7)]  # fmt: skip
    r = Retriever()
    reqs = _requests(7)
    r.select(chunks, reqs[0], 3072)  # builds the index
    for req in reqs[1:3]:
        _CountedChunk.reads = 0
        picked = r.select(chunks, req, 3072)
        assert picked and _CountedChunk.reads < len(chunks) / 10, (_CountedChunk.reads, len(chunks))


@pytest.mark.parametrize("seed", [0, 1])
def test_near_duplicates_are_found_as_by_intersecting_with_every_pick(seed):
    """The picker counts shared shingles through an index of the picks; the decision must be the pairwise
    rule's (Jaccard of the 5-gram sets >= dup_jaccard), ties at the threshold included."""
    from indexer.retrieval import _Picker, _shingles

    rng = random.Random(seed)
    cfg = RetrievalConfig(dup_jaccard=0.8)
    base = [rng.randrange(50) for _ in range(200)]
    picker, kept = _Picker(cfg, budget=1 << 30), []
    for i in range(300):
        tokens = list(base) if i % 3 else [rng.randrange(50) for _ in range(rng.randint(0, 120))]
        for _ in range(rng.choice([0, 1, 5, 20, 60])):  # from exact copies to unrelated text
            tokens[rng.randrange(len(tokens))] = rng.randrange(50) if tokens else 0
        sh = _shingles(tokens)
        expected = any(len(sh & o) / max(len(sh | o), 1) >= cfg.dup_jaccard for o in kept)
        assert picker.near_duplicate(sh) == expected, i
        ch = Chunk(f"f{i}.py", "code", 1, 1, "x", tuple(tokens), None, f"{i:032x}")
        picker.offer(1.0, ch)
        if not expected:
            kept.append(sh)
    assert len(picker.picked) == len(kept) > 5
    assert picker.near_duplicate(set()) is False  # no shingles share nothing (the pairwise rule: 0 / 1)
