"""Retrieval: signals, budget, near-duplicates, deterministic order."""

import pytest
import torch

from blend.loader import load_model
from indexer.chunker import Chunker
from indexer.commits import COMMIT_PREFIX
from indexer.retrieval import RetrievalConfig, RetrievalRequest, Retriever, imported_paths

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chunks(hf_checkpoints):
    tok = load_model(hf_checkpoints["llama-gqa"], device="cpu").tokenizer
    ch = Chunker(tok, "ab" * 16, 256, 8)
    files = {
        "pkg/geometry.py": "def area(w, h):\n    return w * h\n",
        "pkg/colors.py": "def blend_colors(a, b):\n    return mix_channels(a, b)\n",
        "pkg/copy_of_colors.py": "def blend_colors(a, b):\n    return mix_channels(a, b)\n",
        "pkg/unrelated.py": "def zebra():\n    return 'stripes'\n",
        "pkg/open_one.py": "OPEN = True\n",
        "pkg/recent_one.py": "RECENT = True\n",
        "README.md": "# Project\n\nUse area().\n",
        "pkg/main.py": "from pkg.geometry import area\n",
    }
    out = [c for path, text in files.items() for c in ch.chunk_file(path, text)]
    out += [ch.make(COMMIT_PREFIX + "abc", "commit", "commit abc\n\nFix colors\n", 0, 0)]
    return out


def _req(**kw):
    text = "from pkg.geometry import area\n\nx = blend_colors(mix_channels(1, 2), 3)\n"
    base = dict(path="pkg/main.py", text=text, cursor=len(text), open_paths=("pkg/open_one.py",),
                recent_paths=("pkg/recent_one.py",))  # fmt: skip
    return RetrievalRequest(**{**base, **kw})


def test_imports_are_resolved():
    known = {"pkg/geometry.py", "pkg/__init__.py", "pkg/sub/util.py", "src/lib/core.py", "web/helper.ts"}
    text = "import pkg\nfrom pkg.geometry import area\nfrom .sub import util\nimport lib.core\n"
    assert imported_paths("pkg/main.py", text, known) == {
        "pkg/__init__.py", "pkg/geometry.py", "pkg/sub/util.py", "src/lib/core.py"}  # fmt: skip
    assert imported_paths("web/app.ts", "import { h } from './helper';\n", known) == {"web/helper.ts"}
    assert imported_paths("broken.py", "import (", known) == set()


def test_selection_by_signal_with_dedup_and_deterministic_order(chunks):
    r = Retriever()
    picked = r.select(chunks, _req())
    paths = [c.path for c in picked]
    assert paths[-1] == "pkg/geometry.py"  # imported: the most relevant, right before the prompt
    assert "pkg/main.py" not in paths  # the current file is the local prompt's
    assert {"pkg/open_one.py", "pkg/recent_one.py", "README.md", COMMIT_PREFIX + "abc"} <= set(paths)
    assert ("pkg/colors.py" in paths) != ("pkg/copy_of_colors.py" in paths)  # near-duplicates: one is kept
    assert "pkg/unrelated.py" not in paths  # no signal at all
    assert [c.key for c in r.select(list(reversed(chunks)), _req())] == [c.key for c in picked]


def test_budget_is_respected(chunks):
    r = Retriever(RetrievalConfig(budget_tokens=40))
    picked = r.select(chunks, _req())
    assert sum(c.n_tokens for c in picked) <= 40 and picked
    assert r.select(chunks, _req(), budget_tokens=0) == []


def test_imports_of_code_that_does_not_parse():
    from indexer.retrieval import imported_paths

    known = {"shop/units.py", "shop/prices.py", "pkg/x/y.py", "os_helpers.py"}
    text = "from shop import units\nfrom .x import (y,\n    z)\nimport shop.prices as p\n\ndef weigh(kg):\n"
    assert imported_paths("pkg/app.py", text, known) == {"shop/units.py", "shop/prices.py", "pkg/x/y.py"}


def test_imports_are_remembered_by_the_import_lines(monkeypatch):
    """A keystroke in a function body does not parse the file again (`ast` of a 90 KB file: ~26 ms a request);
    any change to an import line, a continuation of one, or an import inside a function is seen."""
    import indexer.retrieval as retrieval

    known = {"pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/d.py", "pkg/e.py"}
    parses = []
    real = retrieval.ast.parse
    monkeypatch.setattr(retrieval.ast, "parse", lambda text, *a, **k: parses.append(1) or real(text, *a, **k))

    def fresh(text):  # what imported_paths gives with nothing remembered
        monkeypatch.setattr(retrieval, "_MODULES", type(retrieval._MODULES)())
        return imported_paths("pkg/main.py", text, known)

    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(50))
    text = "from pkg import (\n    a,\n    b,\n)\n" + body
    assert imported_paths("pkg/main.py", text, known) == {"pkg/a.py", "pkg/b.py"}
    n = len(parses)
    edited = text.replace("return x + 7", "return x + 77")
    assert imported_paths("pkg/main.py", edited, known) == {"pkg/a.py", "pkg/b.py"} and len(parses) == n
    broken = text.replace("return x + 7", "return x +")  # typing: the file does not parse
    assert imported_paths("pkg/main.py", broken, known) == {"pkg/a.py", "pkg/b.py"} and len(parses) == n
    for change, want in [
        (text.replace("    b,\n", "    c,\n"), {"pkg/a.py", "pkg/c.py"}),  # a continuation line
        (text.replace("return x + 7", "from pkg import d\n    return x"), {"pkg/a.py", "pkg/b.py", "pkg/d.py"}),
        ("import pkg.e, \\\n    pkg.a\n" + body, {"pkg/e.py", "pkg/a.py"}),
        ("import pkg.e, \\\n    pkg.b\n" + body, {"pkg/e.py", "pkg/b.py"}),
        ("from pkg import (a,\n" + body, {"pkg/a.py"}),  # an open parenthesis while typing
    ]:
        assert imported_paths("pkg/main.py", change, known) == want == fresh(change)
