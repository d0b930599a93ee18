"""Repository holes: deterministic under a seed, and only lines that use a name defined in an imported file."""

from __future__ import annotations

import subprocess

import pytest

from kvblend.eval.datasets import DatasetError, load_dataset
from kvblend.eval.holes import repository_holes

GEOMETRY = '''"""Shapes."""

ORIGIN = (0, 0)


def area(w, h):
    return w * h


class Shape:
    def scale(self, k):
        return k
'''

APP = """from pkg.geometry import ORIGIN, Shape, area


def local_helper(v):
    return v + 1


def main():
    a = area(2, 3)
    b = local_helper(a)
    s = Shape()
    t = s.scale(2)  # a comment: not a hole
    print(ORIGIN)
    items = [a, b]
    items.append(len(items))
    return a + b + t
"""

# Uses `area` without importing pkg.geometry: the name is not defined in a file it imports.
OTHER = """def area2(w):
    x = area(1, 2)
    return x
"""


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "geometry.py").write_text(GEOMETRY)
    (root / "pkg" / "app.py").write_text(APP)
    (root / "pkg" / "other.py").write_text(OTHER)
    (root / "pkg" / "secret.py").write_text("from pkg.geometry import area\nkey = area(1, 2)\n")
    (root / ".gitignore").write_text("pkg/secret.py\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_only_lines_using_names_from_imported_files_are_masked(repo):
    items = repository_holes(repo)
    by_id = {it.id: it for it in items}
    # line 9 area (imported name), 11 Shape, 13 ORIGIN (print is a builtin); line 12 has a comment, line 10
    # calls a function of its own file, line 15's `append` is a list method; other.py does not import
    # geometry; secret.py is git-ignored (the indexer's walk decides which files are read).
    assert sorted(by_id) == ["pkg/app.py:11", "pkg/app.py:13", "pkg/app.py:9"]
    assert by_id["pkg/app.py:9"].meta == {"line": 9, "identifiers": ["area"], "defined_in": ["pkg/geometry.py"]}
    assert by_id["pkg/app.py:13"].meta["identifiers"] == ["ORIGIN"]
    for it in items:
        assert it.text[: it.cursor] + it.middle + it.text[it.cursor :] == APP
        assert it.prefix.endswith("\n    ") and "\n" not in it.middle and it.suffix.startswith("\n")
        assert it.repo == str(repo.resolve()) and it.path == "pkg/app.py"
    assert by_id["pkg/app.py:11"].middle == "s = Shape()"


def test_attribute_defined_in_an_imported_class_counts(repo):
    (repo / "pkg" / "app.py").write_text(APP.replace("s.scale(2)  # a comment: not a hole", "s.scale(2)"))
    ids = {it.id: it.meta["identifiers"] for it in repository_holes(repo)}
    assert ids["pkg/app.py:12"] == ["scale"]


def test_same_seed_same_items(repo):
    for i in range(8):  # enough candidates for the seed to matter
        body = f"def f{i}():\n    y = area({i}, 2)\n    z = area(y, {i})\n    return z\n"
        (repo / "pkg" / f"use{i}.py").write_text("from pkg.geometry import area\n\n\n" + body)
    runs = [[it.id for it in load_dataset(repo, seed=5, limit=6)[1]] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 6
    draws = {tuple(it.id for it in load_dataset(repo, seed=s, limit=6)[1]) for s in range(5)}
    assert len(draws) > 1
    kind, all_items = load_dataset(repo, seed=5)
    assert kind == "repo_holes" and len(all_items) == 3 + 16
    assert [it.id for it in all_items[:6]] == runs[0]  # --limit takes the first N of the same shuffle


def test_a_repository_without_holes_is_an_error(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(DatasetError, match="no repository holes"):
        repository_holes(tmp_path)
