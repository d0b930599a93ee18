"""The indexer end to end on a fixture git repository built here: what is chunked, what never is, incremental
updates, damaged disk entries, the real watchdog observer."""

import os
import time
from pathlib import Path

import pytest
import torch

from blend.cacheblend import precompute_chunk
from blend.loader import load_model
from indexer import Indexer, IndexerConfig
from indexer.keys import ChunkKey
from indexer.serde import decode
from indexer.store import TieredStore
from indexer.store_memory import MemoryStore

torch.set_num_threads(1)

ENV_SECRET = "sup3rsecret-env-value-7781"
PEM_SECRET = "MIIEpAIBAAKCAQEA7bq9fixturepemsecretbody"
TOKEN_SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
BINARY_MARKER = "BINARYMARKERXYZ"
SECRETS = (ENV_SECRET, PEM_SECRET, TOKEN_SECRET, BINARY_MARKER, "PRIVATE KEY")

GEOMETRY = '''"""Plane geometry helpers."""

import math


def area(width, height):
    """Area of a width x height rectangle, in square units."""
    return width * height


# Perimeter, kept separate from area so both can be tested on their own.
def perimeter(width, height):
    """Perimeter of a width x height rectangle."""
    return 2 * (width + height)


@staticmethod
def diagonal(width, height):
    """Length of the diagonal of a width x height rectangle."""
    return math.sqrt(width * width + height * height)


class Circle:
    """A circle given by its radius."""

    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius * self.radius
'''

README = """# Fixture project

A small project the indexer tests run on.

## Usage

Call `area(width, height)` from `pkg.geometry`.

## License

MIT, see the LICENSE file.
"""


def _git(repo, *paths, message):
    repo.index.add(list(paths))
    repo.index.commit(message)


def make_fixture_repo(root: Path) -> None:
    """A git repository with code, README, docs, 3 commits, secrets, a binary, symlink loops, a non-UTF-8 file,
    a broken file, ignored files and a file over 1 MB."""
    import git

    root.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(root)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Fixture Author")
        cw.set_value("user", "email", "fixture@example.com")
    files = {
        "README.md": README,
        "pkg/__init__.py": '"""The fixture package."""\n',
        "pkg/geometry.py": GEOMETRY,
        "pkg/shapes.py": "from pkg.geometry import area, perimeter\n\n\ndef square_area(side):\n"
        "    return area(side, side)\n\n\ndef square_perimeter(side):\n    return perimeter(side, side)\n",
        "src/app.js": "import { helper } from './helper';\n\nfunction main() {\n  return helper(1);\n}\n\n"
        "function other() {\n  console.log('other');\n}\n",
        "src/helper.js": "export function helper(x) {\n  return x + 1;\n}\n",
        "docs/guide.md": "# Guide\n\nRead this first.\n\n```\n# not a heading\n```\n\n## Details\n\nMore text.\n",
        "broken.py": "def broken(:\n    pass\n\n\ndef fine():\n    return 1\n",
        ".gitignore": "build/\n*.log\n",
        ".kvblend/ignore": "generated/\n",
        ".env": f"API_TOKEN={ENV_SECRET}\n",
        "keys/server.pem": f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_SECRET}\n-----END RSA PRIVATE KEY-----\n",
        "config/settings.py": f'GITHUB_TOKEN = "{TOKEN_SECRET}"\nDEBUG = True\n',
        "build/out.py": "x = 'build output'\n",
        "debug.log": "log line\n",
        "generated/gen.py": "y = 'generated'\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "assets").mkdir()
    (root / "assets/blob.xyz").write_bytes(b"\x00\x01\x02" + BINARY_MARKER.encode() + b"\xff\x00")
    (root / "assets/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + BINARY_MARKER.encode())
    (root / "legacy.py").write_bytes(b"# caf\xe9 latin-1\nx = 1\n")
    (root / "big.txt").write_text("b" * (1 << 20) + "\n")
    os.symlink(".", root / "loop")  # a directory link to its own parent
    os.symlink("selfloop", root / "selfloop")  # ELOOP
    _git(repo, "README.md", "pkg/__init__.py", "pkg/geometry.py", ".gitignore", message="Initial geometry package")
    _git(repo, ".env", "config/settings.py", "keys/server.pem", message=f"Add settings\n\ntoken {TOKEN_SECRET}")
    _git(repo, "pkg/shapes.py", "src/app.js", "src/helper.js", "assets/blob.xyz", message="Add shapes and the app")


@pytest.fixture(scope="module")
def lm(hf_checkpoints):
    return load_model(hf_checkpoints["llama-gqa"], device="cpu")


def _cfg(root, **kw):
    return IndexerConfig(root, max_chunk_tokens=256, min_chunk_tokens=24, **kw)


@pytest.fixture()
def repo(tmp_path):
    make_fixture_repo(tmp_path / "ws")
    return tmp_path / "ws"


def test_fixture_repository_is_indexed_without_secrets_or_binaries(repo, lm):
    idx = Indexer(_cfg(repo), lm)
    stats = idx.index()
    chunks = idx.chunks()
    paths = {c.path for c in chunks if c.kind != "commit"}
    for expected in ("README.md", "pkg/geometry.py", "pkg/shapes.py", "src/app.js", "docs/guide.md", "broken.py"):
        assert expected in paths
    for never in (".env", "keys/server.pem", "config/settings.py", "assets/blob.xyz", "assets/logo.png",
                  "build/out.py", "debug.log", "generated/gen.py", "legacy.py", "big.txt"):  # fmt: skip
        assert never not in paths
    assert not any(p.startswith(("loop/", "selfloop", ".kvblend/cache", ".git/objects")) for p in paths)
    sk = stats.skipped
    assert sk["secret"] == 3 and sk["binary"] == 2 and sk["symlink_loop"] == 2
    assert sk["not_utf8"] == 1 and sk["too_large"] == 1 and sk["ignored"] >= 3  # build/, debug.log, generated/
    # Python split at top-level definitions: each def starts its own chunk (its comment / decorator included)
    geo = {c.start_line: c for c in idx.files["pkg/geometry.py"]}
    lines = GEOMETRY.splitlines()
    starts = sorted(geo)
    firsts = [next(ln for ln in lines[s - 1 :] if ln.strip()) for s in starts]
    perimeter_comment = "# Perimeter, kept separate from area so both can be tested on their own."
    assert firsts == ['"""Plane geometry helpers."""', "def area(width, height):", perimeter_comment,
                      "@staticmethod", "class Circle:"]  # fmt: skip
    assert "import math" in geo[1].text and geo[starts[1]].end_line == starts[2] - 1
    assert not lines[starts[1] - 1].strip() and lines[geo[starts[1]].end_line - 1].strip()  # blanks lead
    # the broken file falls back to the heuristic and still yields its text
    assert "def fine():" in "".join(c.text for c in idx.files["broken.py"])
    # markdown by heading, not inside fences
    readme = [c.text.split("\n", 1)[1].strip().split("\n")[0] for c in idx.files["README.md"]]
    assert readme[0] == "# Fixture project" and readme[-1] == "## License"
    # commits: newest first, one chunk each, message and summary, secrets removed
    commits = [c for c in chunks if c.kind == "commit"]
    assert len(commits) == 3 and "Add shapes and the app" in commits[0].text
    assert ".env | +1 -0 (diff not shown)" in commits[1].text and "config/settings.py" in commits[1].text
    assert "Initial geometry package" in commits[2].text and "pkg/geometry.py | +30 -0" in commits[2].text
    for c in chunks:
        assert c.n_tokens <= 256 and c.text.startswith("<|file_sep|>")
        assert list(c.tokens) == lm.tokenizer.encode(c.text)
        for s in SECRETS:
            assert s not in c.text, (c.path, s)
    # nothing secret in any store entry either
    disk = idx.store.tier("disk")
    files = list(disk.dir.rglob("*.kv"))
    assert len(files) == len({c.key for c in chunks}) == stats.computed
    for f in files:
        kv = decode(bytearray(f.read_bytes()))
        text = lm.tokenizer.decode(kv.tokens.tolist(), skip_special=False)
        assert not any(s in text for s in SECRETS)
    assert stats.files == len(idx.files) and stats.chunks == len(chunks)
    assert stats.tokens == sum(c.n_tokens for c in chunks) and stats.bytes == sum(f.stat().st_size for f in files)


def test_stored_kv_is_the_engine_prefill(repo, lm):
    idx = Indexer(_cfg(repo), lm)
    idx.index()
    chunk = idx.files["pkg/geometry.py"][1]
    fresh = Indexer(_cfg(repo), lm)  # empty memory tier: served from disk
    kv = fresh.get_kv(chunk)
    ref = precompute_chunk(lm.model, torch.tensor(chunk.tokens), offset=0)
    assert kv.k.dtype == lm.model.dtype and fresh.computed == 0
    assert torch.equal(kv.tokens, ref.tokens) and torch.equal(kv.positions, torch.arange(chunk.n_tokens))
    torch.testing.assert_close(kv.k, ref.k.half().float(), rtol=0, atol=0)
    torch.testing.assert_close(kv.v, ref.v.half().float(), rtol=0, atol=0)


def test_editing_one_function_recomputes_exactly_its_chunk(repo, lm):
    idx = Indexer(_cfg(repo), lm)
    idx.index()
    n_geo = len(idx.files["pkg/geometry.py"])
    before = idx.computed
    path = repo / "pkg/geometry.py"
    path.write_text(GEOMETRY.replace("return 2 * (width + height)", "return 2 * width + 2 * height"))
    r = idx.update([path])
    assert (r.files, r.added, r.removed, r.unchanged, r.queued, r.computed) == (1, 1, 1, n_geo - 1, 1, 1)
    assert idx.computed - before == 1
    # a new import line changes the module-header chunk; the defs below only move (line numbers, same keys)
    old_starts = [c.start_line for c in idx.files["pkg/geometry.py"]]
    path.write_text(path.read_text().replace("import math\n", "import math\nimport os\n"))
    r = idx.update(["pkg/geometry.py"])
    assert (r.queued, r.unchanged) == (1, n_geo - 1) and idx.computed - before == 2
    assert [c.start_line for c in idx.files["pkg/geometry.py"]][1:] == [s + 1 for s in old_starts[1:]]
    # saving the same text again is a no-op; a new function is one new chunk; deleting a file drops its chunks
    assert idx.update([path]).queued == 0
    path.write_text(path.read_text() + '\n\ndef volume(w, h, d):\n    """Volume of a box."""\n    return w * h * d\n')
    r = idx.update([path])
    assert (r.added, r.removed, r.queued) == (1, 0, 1)
    (repo / "src/helper.js").unlink()
    r = idx.update([repo / "src/helper.js"])
    assert r.removed == 1 and "src/helper.js" not in idx.files
    # a file that becomes a secret is dropped from the index
    (repo / "pkg/shapes.py").write_text(f'KEY = "{TOKEN_SECRET}"\n')
    r = idx.update([repo / "pkg/shapes.py"])
    assert r.skipped["secret"] == 1 and "pkg/shapes.py" not in idx.files


def test_damaged_disk_entries_are_detected_and_recomputed(repo, lm):
    idx = Indexer(_cfg(repo), lm)
    idx.index()
    chunks = idx.files["pkg/geometry.py"]
    disk = idx.store.tier("disk")
    truncated, flipped = (disk.dir / chunks[0].key.relpath()), (disk.dir / chunks[1].key.relpath())
    good = truncated.read_bytes()
    truncated.write_bytes(good[: len(good) // 2])  # a writer killed mid-write without the atomic rename
    data = bytearray(flipped.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    flipped.write_bytes(bytes(data))
    stale = disk.dir / chunks[0].key.relpath().replace(".kv", ".123.tmp")
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600,) * 2)
    fresh = Indexer(_cfg(repo), lm)  # a restart: new memory tier, same disk
    assert not stale.exists()
    stats = fresh.index()
    assert stats.computed == 1 and truncated.read_bytes() == good  # truncation: caught by the size check
    kv = fresh.get_kv(chunks[1])  # bit flip: caught by the checksum on load, dropped, recomputed
    assert fresh.computed == 2 and fresh.store.tier("disk").dropped == 2
    ref = precompute_chunk(lm.model, torch.tensor(chunks[1].tokens), offset=0)
    torch.testing.assert_close(kv.k, ref.k.half().float(), rtol=0, atol=0)
    assert decode(bytearray(flipped.read_bytes()), chunks[1].key) is not None


def test_fingerprint_mismatch_is_never_served(repo, lm, hf_checkpoints):
    idx = Indexer(_cfg(repo), lm)
    idx.index()
    chunk = idx.files["pkg/geometry.py"][0]
    disk = idx.store.tier("disk")
    other = ChunkKey("0" * 32, chunk.key.token_hash)
    (disk.dir / other.relpath()).parent.mkdir(parents=True, exist_ok=True)
    (disk.dir / other.relpath()).write_bytes(
        (disk.dir / chunk.key.relpath()).read_bytes()
    )  # copied under a foreign key
    assert disk.get(other) is None and not (disk.dir / other.relpath()).exists()
    lm2 = load_model(hf_checkpoints["qwen2"], device="cpu")  # another model: other keys, nothing reused
    idx2 = Indexer(_cfg(repo), lm2)
    stats = idx2.index()
    assert stats.reused == 0 and stats.computed == len({c.key for c in idx2.chunks()})
    assert all(c.key.fingerprint == lm2.fingerprint for c in idx2.chunks())


def test_shared_prefix_mode_keys_and_positions(repo, lm):
    idx = Indexer(_cfg(repo, shared_prefix=True), lm)
    idx.index()
    chunk = idx.files["pkg/geometry.py"][0]
    plain = Indexer(_cfg(repo), lm).chunker.chunk_file("pkg/geometry.py", GEOMETRY)[0]
    assert chunk.tokens == plain.tokens and chunk.key != plain.key
    kv = idx.get_kv(chunk)
    n_prefix = len(lm.tokenizer.encode("<|repo_name|>ws\n"))
    assert torch.equal(kv.positions, torch.arange(n_prefix, n_prefix + chunk.n_tokens))


def test_background_queue_orders_open_files_first(repo, lm):
    seen = []
    idx = Indexer(_cfg(repo), lm, progress=lambda p: seen.append(p))
    idx.set_open([repo / "src/app.js"])
    idx.index()
    order = [p.path for p in seen]
    assert order[0] == "src/app.js" and order.index("README.md") < order.index("pkg/geometry.py")
    assert seen[-1].done == seen[-1].total and seen[-1].fraction == 1.0
    idx.start()
    try:
        (repo / "pkg/__init__.py").write_text('"""The fixture package, edited."""\n\nVERSION = "1.0"\n')
        r = idx.update([repo / "pkg/__init__.py"])
        assert r.queued == 1 and r.computed == 0
        assert idx.wait(timeout=60)
        assert idx.store.contains(idx.files["pkg/__init__.py"][0].key)
    finally:
        idx.close()


def test_background_chunks_skip_the_memory_tier_until_read(repo, lm):
    """Indexing the rest of a repository must not evict the open files' chunks from memory."""
    idx = Indexer(_cfg(repo), lm)
    idx.set_open([repo / "src/app.js"])
    idx.index()
    memory, disk = idx.store.tier("memory"), idx.store.tier("disk")
    hot, cold = idx.files["src/app.js"][0].key, idx.files["pkg/geometry.py"][0].key
    assert memory.contains(hot) and disk.contains(hot)
    assert not memory.contains(cold) and disk.contains(cold)
    assert idx.store.get(cold) is not None and memory.contains(cold)  # a read promotes it
    only_memory = Indexer(_cfg(repo, cache_dir=repo.parent / "mem"), lm, store=TieredStore([MemoryStore(1 << 30)]))
    only_memory.index()
    assert only_memory.store.contains(cold)  # the only tier: nothing is dropped


def test_watchdog_observer_drives_update(repo, lm):
    from indexer.watcher import Watcher

    idx = Indexer(_cfg(repo, debounce_s=0.2), lm)
    idx.index()
    with Watcher(idx) as w:
        (repo / "pkg/new_module.py").write_text("def brand_new_function(x):\n    return x * 42\n")
        (repo / "docs/guide.md").unlink()
        (repo / "secret.pem").write_text("not even read\n")
        deadline = time.time() + 20
        while time.time() < deadline and ("pkg/new_module.py" not in idx.files or "docs/guide.md" in idx.files):
            time.sleep(0.1)
    assert "pkg/new_module.py" in idx.files and "docs/guide.md" not in idx.files
    assert "secret.pem" not in idx.files and w.flushes >= 1
    assert idx.store.contains(idx.files["pkg/new_module.py"][0].key)
