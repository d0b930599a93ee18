"""gitignore-syntax matching for `.gitignore` files (at any depth), `.kvblend/ignore` and built-in patterns.

Semantics follow git: blank lines and `#` comments are skipped, `!` re-includes, a trailing `/` matches
directories only, a pattern with a `/` before its end is anchored to its file's directory, `*` and `?` do
not cross `/`, `**` does, the last matching rule wins, and nothing inside an excluded directory can be
re-included.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

from ledger.globs import glob_to_regex

log = logging.getLogger(__name__)

KVBLEND_IGNORE = ".kvblend/ignore"


@dataclasses.dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]  # matched against the path relative to `base`
    negate: bool
    dir_only: bool
    base: str  # directory of the ignore file, relative to the workspace ("" = root)


def parse_rules(lines: list[str], base: str = "", source: str = "") -> list[Rule]:
    """The rules of one ignore file (`source`, for messages). A pattern that does not compile (`[z-a]`) is
    skipped with a warning: the file's other rules still apply."""
    rules = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.endswith("\\ "):
            line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\"):  # "\#file" / "\!file"
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        regex = glob_to_regex(line)
        if not anchored:
            regex = "(?:.*/)?" + regex
        try:
            compiled = re.compile(f"^{regex}$", re.DOTALL)
        except (re.error, ValueError) as e:
            log.warning("%s: ignoring the pattern %r: %s", source or "ignore rules", raw.rstrip("\n"), e)
            continue
        rules.append(Rule(compiled, negate, dir_only, base))
    return rules


class IgnoreRules:
    """Decides whether a workspace-relative path is excluded; `.gitignore` files are read on demand."""

    def __init__(self, root: Path, builtin: tuple[str, ...] = ()) -> None:
        self.root = root
        self._builtin = parse_rules(list(builtin))
        self._per_dir: dict[str, list[Rule]] = {}
        extra = root / KVBLEND_IGNORE  # os.path.isfile below: False where Path.is_file raises (unsearchable dirs)
        self._kvblend = parse_rules(_read_lines(extra), source=str(extra)) if os.path.isfile(extra) else []

    def _dir_rules(self, rel_dir: str) -> list[Rule]:
        rules = self._per_dir.get(rel_dir)
        if rules is None:
            path = self.root / rel_dir / ".gitignore"
            rules = parse_rules(_read_lines(path), rel_dir, str(path)) if os.path.isfile(path) else []
            self._per_dir[rel_dir] = rules
        return rules

    def matches(self, rel: str, is_dir: bool) -> bool:
        """The rules alone, for `rel` whose parent directories are known to be included (walkers)."""
        parts = rel.split("/")
        rules: list[Rule] = []
        for depth in range(len(parts)):  # the root's .gitignore first, deeper ones override it
            rules += self._dir_rules("/".join(parts[:depth]))
        ignored = False
        for r in rules + self._kvblend:
            sub = rel[len(r.base) + 1 :] if r.base else rel
            if (is_dir or not r.dir_only) and r.regex.match(sub):
                ignored = not r.negate
        return ignored or any((is_dir or not r.dir_only) and r.regex.match(rel) for r in self._builtin)

    def is_ignored(self, rel: str, is_dir: bool = False) -> bool:
        """`rel`: a posix path relative to the root. True when it, or a directory above it, is excluded."""
        parts = rel.strip("/").split("/")
        for depth in range(1, len(parts)):
            if self.matches("/".join(parts[:depth]), True):
                return True
        return self.matches("/".join(parts), is_dir)

    @staticmethod
    def is_rule_file(rel: str) -> bool:
        """Whether a change at `rel` may change what is ignored anywhere: an ignore file, or the `.kvblend`
        directory (moved or deleted as a whole, its ignore file sends no event of its own)."""
        if rel == KVBLEND_IGNORE or KVBLEND_IGNORE.startswith(rel + "/"):
            return True
        return rel == ".gitignore" or rel.endswith("/.gitignore")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        log.warning("cannot read %s: %s", path, e.strerror)
        return []
