"""Repository holes: fill-in-the-middle items cut from a local repository's own Python files.

A hole is one whole simple statement on one line (an assignment, call, return, raise or assert; not an import,
docstring, or a line with a comment or a second statement) that reads an identifier *defined in another file of the
repository that its file imports*: a `Name` the file does not bind itself (it came in by an import), or an
`Attribute`'s attribute the file does not define; dunders, builtins and the attributes of builtin types (`append`,
`get`, ...) do not count. Defined means: a top-level `def`, `class` or assignment target, or a `def` / assignment in
the body of a top-level class. The cursor sits after the line's indentation, `middle` is the rest of the line, and
the rest of the repository is the context (the hole's own file is never retrieved as context; see `Retriever`).

Files come from the indexer's walk, so ignore files, secrets and size limits apply as they do for `kvblend index`.
Candidates are listed in (path, line) order; `datasets.select` then shuffles them by the seed.
"""

from __future__ import annotations

import ast
import builtins
import collections
import logging
from pathlib import Path

from indexer.config import IndexerConfig
from indexer.retrieval import imported_paths
from indexer.walk import walk_workspace
from kvblend.eval.datasets import DatasetError, EvalItem
from kvblend.lines import line_starts, lines_of

log = logging.getLogger(__name__)

MIN_MIDDLE_CHARS = 4  # shorter lines (`x = y`) say little about context use
MAX_MIDDLE_CHARS = 120  # longer than a single-line budget of 32 tokens can reach
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Raise, ast.Assert)


def definitions(tree: ast.Module) -> set[str]:
    """Names a module defines: top-level def/class/assignment targets and what top-level classes define."""
    out: set[str] = set()

    def targets(node: ast.stmt) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return node.targets
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            return [node.target]
        return []

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        for t in targets(node):
            out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    out.add(sub.name)
                for t in targets(sub):
                    out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def bound_names(tree: ast.Module) -> set[str]:
    """Names the file binds itself anywhere (assignment and loop targets, parameters, def / class names,
    `except ... as`); names bound only by an import are not in it (they come from elsewhere)."""
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def used_identifiers(node: ast.AST) -> tuple[set[str], set[str]]:
    """(`Name` ids read, `Attribute` attributes read) under `node`."""
    names, attrs = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            names.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
            attrs.add(n.attr)
    return names, attrs


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


# Attributes of builtin types: `.append`, `.get`, `.items` name no repository definition even when some class
# of the repository happens to define a method of that name.
_BUILTIN_ATTRS = frozenset(a for t in (str, bytes, list, dict, set, tuple, int, float, object) for a in dir(t))
_BUILTIN_NAMES = frozenset(dir(builtins))


def foreign_identifiers(node: ast.AST, own: set[str], bound: set[str], imported: set[str], defined_in) -> list[str]:
    """Identifiers `node` reads that a file it imports defines: names the file does not bind itself (so
    imported ones), attributes the file does not define; dunders and builtins excluded."""
    names, attrs = used_identifiers(node)
    out = {n for n in names if n not in bound and n not in own and n not in _BUILTIN_NAMES}
    out |= {a for a in attrs if a not in own and a not in _BUILTIN_ATTRS}
    return sorted(n for n in out if not _is_dunder(n) and defined_in.get(n, set()) & imported)


def repository_holes(root: Path) -> list[EvalItem]:
    """Every single-line hole of the repository at `root`, in (path, line) order (`datasets.select` draws
    from it by the seed)."""
    try:
        cfg = IndexerConfig(Path(root), n_commits=0)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    walk = walk_workspace(cfg)
    trees: dict[str, tuple[str, ast.Module]] = {}
    for sf in walk.files:
        if not sf.path.endswith(".py"):
            continue
        try:
            trees[sf.path] = (sf.text, ast.parse(sf.text))
        except (SyntaxError, ValueError, RecursionError):
            log.info("holes: %s does not parse; skipped", sf.path)
    defs = {p: definitions(t) for p, (_, t) in trees.items()}
    defined_in: dict[str, set[str]] = collections.defaultdict(set)
    for p, names in defs.items():
        for name in names:
            defined_in[name].add(p)
    items = []
    for path in sorted(trees):
        text, tree = trees[path]
        imported = imported_paths(path, text, set(trees))
        items += _file_holes(str(cfg.root), path, text, tree, defs[path], imported, defined_in)
    if not items:
        raise DatasetError(f"no repository holes in {cfg.root}: no Python line uses a name defined in another file")
    log.info("holes: %d candidates in %d Python files of %s", len(items), len(trees), cfg.root)
    return items


def _file_holes(root: str, path: str, text: str, tree, own: set[str], imported: set[str], defined_in) -> list[EvalItem]:
    if not imported:
        return []
    bound = bound_names(tree)
    # ast numbers lines as Python does: \n, \r\n and a lone \r each end one (old Mac files use only \r).
    lines, starts = lines_of(text), line_starts(text)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    out, seen_lines = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, _SIMPLE) or node.lineno != node.end_lineno or node.lineno in seen_lines:
            continue
        if isinstance(node, ast.Expr) and id(node.value) in docstrings:
            continue
        line = lines[node.lineno - 1]
        if not line.isascii():  # ast columns are UTF-8 byte offsets; ASCII keeps them character offsets
            continue
        indent = len(line) - len(line.lstrip())
        middle = line[indent:].rstrip()
        if node.col_offset != indent or node.end_col_offset != indent + len(middle):
            continue  # a comment or a second statement shares the line
        if not MIN_MIDDLE_CHARS <= len(middle) <= MAX_MIDDLE_CHARS:
            continue
        foreign = foreign_identifiers(node, own, bound, imported, defined_in)
        if not foreign:
            continue
        seen_lines.add(node.lineno)
        cut = starts[node.lineno - 1] + indent
        where = sorted({p for n in foreign for p in defined_in[n]} & imported)
        out.append(
            EvalItem(
                id=f"{path}:{node.lineno}",
                path=path,
                prefix=text[:cut],
                suffix=text[cut + len(middle) :],
                middle=middle,
                repo=root,
                meta={"line": node.lineno, "identifiers": foreign, "defined_in": where},
            )
        )
    out.sort(key=lambda it: it.meta["line"])
    return out
