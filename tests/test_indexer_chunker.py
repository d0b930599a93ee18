"""Chunking rules, ignore rules (against git itself) and secret detection."""

import subprocess

import pytest
import torch

from blend.loader import load_model
from indexer.chunker import Chunker, heuristic_starts, markdown_starts, python_starts
from indexer.ignore import IgnoreRules
from indexer.secrets import find_secret, is_secret_path, redact_lines

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok(hf_checkpoints):
    return load_model(hf_checkpoints["llama-gqa"], device="cpu").tokenizer


def _chunker(tok, max_tokens=128, min_tokens=16):
    return Chunker(tok, "ab" * 16, max_tokens, min_tokens)


def test_python_units_start_at_top_level_definitions():
    src = "import os\n\n# about f\n@dec\ndef f():\n    pass\n\nX = 1\n\n\nclass C:\n    def g(self):\n        pass\n"
    lines = src.splitlines(keepends=True)
    starts = sorted(set(python_starts(src, lines)))
    assert starts == [1, 6, 8, 13]  # blank + comment + decorator + def; X = 1; blank lines + class; end
    assert python_starts("def broken(:\n", ["def broken(:\n"]) is None


def test_heuristic_and_markdown_units():
    js = "function a() {\n  x();\n}\n\nfunction b() {\n\n  y();\n}\n\nconst z = 1;\n"
    assert heuristic_starts(js.splitlines(keepends=True)) == [0, 3, 8]  # `}` closes, indented blank inside b
    md = "# T\n\ntext\n\n```\n# code, not a heading\n```\n\n## Sub\nmore\n"
    assert markdown_starts(md.splitlines(keepends=True)) == [0, 7]


@pytest.mark.parametrize("max_tokens", [32, 64, 200])
def test_chunks_never_exceed_the_limit_and_cover_the_file(tok, max_tokens):
    body = "".join(f"def f{i}(a, b):\n    return a * {i} + b  # {'x' * (i % 7)}\n\n\n" for i in range(30))
    body += "LONG = '" + "y" * 400 + "'\n"  # one line longer than any budget
    chunks = _chunker(tok, max_tokens, min_tokens=8).chunk_file("pkg/mod.py", body)
    assert all(c.n_tokens <= max_tokens for c in chunks)
    assert "".join(c.text.split("\n", 1)[1] for c in chunks) == body  # nothing lost, nothing repeated
    for c in chunks:
        assert c.text.startswith("<|file_sep|>pkg/mod.py\n") and list(c.tokens) == tok.encode(c.text)
        assert c.tokens[0] == tok.token_id("<|file_sep|>")


def test_small_units_join_the_next_and_keys_do_not_depend_on_position(tok):
    ch = _chunker(tok, 128, min_tokens=16)
    a = "import os\n\n\ndef alpha(value):\n    return os.path.join(value, 'alpha')\n"
    b = "def beta(value):\n    return os.path.join(value, 'beta-beta')\n"
    one = ch.chunk_file("m.py", a + "\n\n" + b)
    assert len(one) == 2 and "import os" in one[0].text and "def alpha" in one[0].text
    moved = ch.chunk_file("m.py", "\n\n\n" + a + "\n\n" + b)
    assert moved[1].key == one[1].key and moved[1].start_line == one[1].start_line + 3
    assert ch.chunk_file("other.py", a + "\n\n" + b)[1].key != one[1].key  # the path is part of the text
    assert ch.chunk_file("empty.py", "\n\n  \n") == []


def test_ignore_rules_agree_with_git(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n/top.txt\ndocs/**/gen_*\n\\#hash\n")
    (root / "sub").mkdir()
    (root / "sub/.gitignore").write_text("local.txt\n*.tmp\n")
    paths = ["a.log", "keep.log", "sub/keep.log", "build/x.py", "src/build/y.py", "top.txt", "sub/top.txt",
             "docs/a/b/gen_x.md", "docs/gen_y.md", "docs/a/real.md", "sub/local.txt", "local.txt", "sub/d/e.tmp",
             "#hash", "main.py"]  # fmt: skip
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("x")
    out = subprocess.run(["git", "-C", str(root), "check-ignore", *paths], capture_output=True, text=True).stdout
    git_ignored = set(out.split())
    rules = IgnoreRules(root)
    ours = {p for p in paths if rules.is_ignored(p)}
    assert ours == git_ignored and "main.py" not in ours and len(ours) >= 8


def test_a_pattern_that_does_not_compile_is_skipped(tmp_path, caplog):
    root = tmp_path / "r"
    (root / ".kvblend").mkdir(parents=True)
    (root / ".gitignore").write_text("[z-a]\n*.log\n**/[b-a]*\n")  # git accepts these; no regex range can
    (root / ".kvblend/ignore").write_text("[!]\ngen/\n")
    rules = IgnoreRules(root)
    with caplog.at_level("WARNING"):
        assert rules.is_ignored("a.log") and rules.is_ignored("gen/x.py") and not rules.is_ignored("main.py")
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "[z-a]" in warned and "[b-a]" in warned and ".gitignore" in warned
    assert "'[!]'" in warned and ".kvblend/ignore" in warned


def test_secret_detection():
    for p in (".env", ".env.local", "prod.env", "certs/server.pem", "id_rsa", "home/.ssh/id_rsa.pub", "id_ed25519"):
        assert is_secret_path(p), p
    for p in ("environment.py", "pem.py", "src/envelope.ts", "README.md"):
        assert not is_secret_path(p), p
    assert find_secret("-----BEGIN OPENSSH PRIVATE KEY-----\nabc") == "private_key"
    assert find_secret("key = 'AKIAIOSFODNN7EXAMPLE'") == "aws_access_key"
    assert find_secret("t = 'ghp_" + "a" * 36 + "'") == "github_token"
    assert find_secret("def parse_key(text):\n    return text.split('-----')\n") is None
    assert redact_lines("ok\ntoken ghp_" + "b" * 40 + "\nfine\n") == "ok\nfine\n"


def test_a_minified_line_is_split_without_tokenizing_what_cannot_fit(tok, monkeypatch):
    """A 40 KB single line (a minified bundle) was tokenized whole at every halving of `_fit` (400 KB: 4.9 s).
    Text longer than max_tokens x the longest token's bytes cannot fit and is halved untokenized: the same
    chunks, far fewer characters through the tokenizer."""
    import random
    import string

    import blend.tokenizer

    assert tok.max_token_bytes is not None
    for text in ("x" * 5000, " " * 5000, "\n" * 3000, "é" * 2000, "def f(a, b):\n    return a + b\n" * 50):
        assert len(tok.encode(text)) * tok.max_token_bytes >= len(text)  # the bound holds
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_letters, k=rng.randint(2, 9))) for _ in range(500)]
    line = ",".join(f"{rng.choice(words)}({rng.randint(0, 999)})" for _ in range(4000))
    text = f"var x = [{line}];\nfunction f() {{\n  return 1;\n}}\n"
    seen = []
    for name in ("encode", "encode_batch"):
        real = getattr(blend.tokenizer.Tokenizer, name)

        def counting(self, texts, _real=real):
            seen.append(len(texts) if isinstance(texts, str) else sum(map(len, texts)))
            return _real(self, texts)

        monkeypatch.setattr(blend.tokenizer.Tokenizer, name, counting)
    fast = _chunker(tok, max_tokens=64).chunk_file("dist/app.min.js", text)
    fast_chars, seen[:] = sum(seen), []
    monkeypatch.setitem(tok.__dict__, "max_token_bytes", None)  # no bound: every piece tokenized
    slow = _chunker(tok, max_tokens=64).chunk_file("dist/app.min.js", text)
    assert [(c.text, c.tokens, c.start_line, c.end_line) for c in fast] == [
        (c.text, c.tokens, c.start_line, c.end_line) for c in slow
    ]
    assert len(fast) > 100 and all(c.n_tokens <= 64 for c in fast)
    assert fast_chars < sum(seen) / 2


_PIECES = [
    "def f():\n", "    return 1\n", "\n", "\n\n", "  \n", "x = 1  \n", "\t\tfoo\n", "# comment:\n", "class A:\n",
    "\r\n", "y\r\n", "):\n", "]\n\n", "é = 'ü'\n", "\u00a0bar\n", "'s\n", "123\n", " 7\n", "@dec\n", "}\n", "\x0c\n",
    "a\x0b", "b\u2028", "   x\n", " (y\n", "''\n", '"""doc\n', "\tz\n", " \t w\n",
    "<|file_sep|>x\n", "    <|endoftext|>\n", "s = '<|file_sep|>'\n", "\n<|file_sep|>\n", "  <|endoftext|>y\n",
]  # fmt: skip


def _trained_tokenizer(tmp_path, qwen2=True):
    """A byte-level BPE trained here on a few sources (no hub): split by the Qwen2 rule and NFC-normalized, as
    Qwen2.5-Coder's, or by ByteLevel's own (GPT-2) rule, with merges of blank-line runs the bundled one lacks."""
    from pathlib import Path

    from tokenizers import Regex, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    from blend.tokenizer import QWEN2_SPLIT, Tokenizer

    hf = HFTokenizer(BPE())
    if qwen2:
        hf.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
        level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.pre_tokenizer = pre_tokenizers.Sequence([split, level])
    else:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    corpus = [p.read_text() for p in sorted(Path(__file__).parents[1].glob("indexer/*.py"))]
    special = ["<|endoftext|>", "<|file_sep|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=alphabet, special_tokens=special)
    hf.train_from_iterator(corpus, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_dir(tmp_path)
    assert qwen2 or tok.token_id("ĊĊ") is not None  # "\n\n" is one token
    return tok


@pytest.mark.parametrize("which", ["bundled", "qwen2", "gpt2"])
def test_ids_cut_out_of_the_file_are_the_chunks_own(tok, tmp_path, monkeypatch, which):
    """Chunks take their ids out of one tokenization of the file (`_FileIds`): they must be exactly the ids of
    the chunk's text tokenized alone, at every kind of line break, indentation, blank run and trailing space."""
    import random
    from pathlib import Path

    import indexer.chunker

    tok = tok if which == "bundled" else _trained_tokenizer(tmp_path, qwen2=which == "qwen2")
    assert tok.cuts_at_lines
    real, cut = indexer.chunker._FileIds.ids, []

    def counting(self, *a):
        got = real(self, *a)
        cut.append(got is not None)
        return got

    monkeypatch.setattr(indexer.chunker._FileIds, "ids", counting)
    rng = random.Random(0)
    sources = [p.read_text() for p in sorted(Path(__file__).parents[1].glob("[bi]*/*.py"))]
    texts = [rng.choice(sources) for _ in range(6)]
    texts += ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 150))) for _ in range(300)]
    texts += ["".join(rng.choice(_PIECES[:9]) for _ in range(rng.randint(1, 150))) for _ in range(100)]  # ASCII
    for i, text in enumerate(texts):
        ch = Chunker(tok, "ab" * 16, rng.choice([24, 64, 512]), rng.choice([4, 16, 48]))
        for c in ch.chunk_file(rng.choice(["m.py", "n.js", "doc.md", "a b.txt"]), text):
            assert list(c.tokens) == tok.encode(c.text), (i, c.start_line, c.text[:200])
    assert sum(cut) > 500 and not all(cut)  # most chunks were cut out of their file, some tokenized whole


def test_ids_are_cut_only_where_the_tokenizer_allows(tok, tmp_path):
    """Another split rule, a prefix space, dropout: every chunk is tokenized on its own. So is a file holding the
    text of an added token that strips the spaces beside it, and non-ASCII text under a normalizer."""
    import json

    from blend.tokenizer import Tokenizer

    assert tok.cuts_at_lines and tok.can_cut("def f():\n    pass\n") and tok.can_cut("é\n")
    assert tok.can_cut("x = '<|file_sep|>'\n")  # added tokens split off first: no cut starts with one
    spec = json.loads(tok._tok.to_str())
    stripping = [{**t, "lstrip": True} if t["content"] == "<|file_sep|>" else t for t in spec["added_tokens"]]
    variants = {
        "prefix space": {**spec, "pre_tokenizer": {**spec["pre_tokenizer"], "add_prefix_space": True}},
        "dropout": {**spec, "model": {**spec["model"], "dropout": 0.1}},
        "other split": {
            **spec,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": r"\s+|\S+"}, "behavior": "Isolated", "invert": False},
                    {**spec["pre_tokenizer"], "use_regex": False},
                ],
            },
        },  # fmt: skip
        "an added token that strips spaces": {**spec, "added_tokens": stripping},
        "a normalizer": {**spec, "normalizer": {"type": "Replace", "pattern": {"String": "\n"}, "content": " "}},
    }
    for name, v in variants.items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        (d / "tokenizer.json").write_text(json.dumps(v))
        other = Tokenizer.from_dir(d)
        if name == "an added token that strips spaces":  # only where the text holds it
            assert other.can_cut("x\n") and not other.can_cut("x = '<|file_sep|>'\n")
        else:
            assert not other.cuts_at_lines and other.token_bytes is None and not other.can_cut("x\n"), name
        text = "def f():\n    return 1\n\n  <|file_sep|> x\n" * 30
        chunks = Chunker(other, "ab" * 16, 64, 8).chunk_file("m.py", text)
        if name != "dropout":  # whose ids differ from one tokenization to the next
            assert all(list(c.tokens) == other.encode(c.text) for c in chunks), name
    qwen = _trained_tokenizer(tmp_path)
    assert qwen.cuts_at_lines and qwen.can_cut("x\n") and not qwen.can_cut("é\n")  # NFC may change é
