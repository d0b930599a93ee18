"""The fixture workspace of the end-to-end tests (language server, Neovim plugin): `app/main.py` uses a name
defined only in `geometry/shapes.py`."""

from __future__ import annotations

from pathlib import Path

SHAPES = '''"""Plane geometry helpers."""


def compute_hypotenuse_length(a, b):
    """Length of the hypotenuse of a right triangle with legs a and b."""
    return (a * a + b * b) ** 0.5


def rectangle_area(width, height):
    return width * height
'''


def make_workspace(root: Path, main: str, readme: str) -> Path:
    (root / "geometry").mkdir(parents=True)
    (root / "geometry" / "__init__.py").write_text("")
    (root / "geometry" / "shapes.py").write_text(SHAPES)
    (root / "app").mkdir()
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(main)
    (root / "README.md").write_text(readme)
    return root
