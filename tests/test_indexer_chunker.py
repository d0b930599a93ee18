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
