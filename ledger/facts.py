"""The ledger: typed live facts of an agent session, rendered as a compact block for agent prompts.

Facts: files touched by allowed edits (with their operation and changed lines, the basis of per-session
limits; each file once, under its real path in the workspace, whatever symlink an edit named it by),
identifiers defined in the repository (the caller provides them, e.g. from the indexer), tests run with their
result, and the constraints in force (the policy's rules, one line each).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.audit import parse_record
from ledger.config import LedgerConfig
from ledger.paths import PathError, normalize
from ledger.policy import OPS, Policy

if TYPE_CHECKING:
    from ledger.changes import FileChange
    from ledger.paths import GlobSet

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Touch:
    op: str  # the last operation on the file
    lines: int  # lines changed in it by allowed edits, summed
    links: list[str] = dataclasses.field(default_factory=list)  # other names edits wrote it by (symlinks)

    def names(self, path: str) -> list[str]:
        return [path, *self.links]


@dataclasses.dataclass
class Session:
    """What allowed edits of one agent session did; the gate's per-session limits read it."""

    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    touched: dict[str, Touch] = dataclasses.field(default_factory=dict)  # real path -> Touch, first touch first
    edits: int = 0  # allowed edits
    lines_changed: int = 0  # over all files, kept as a running sum (read on every decision)

    def record(self, changes: list[FileChange], real: Mapping[str, str] | None = None) -> None:
        """Count an allowed edit. `real` maps a normalized path that leads through a symlink to the workspace
        file it resolves to (the gate passes what it resolved): a file edited as `docs/link` and as
        `src/a.py` is one file, `src/a.py`, so that a session limit cannot be split across its names."""
        real = real or {}
        for c in changes:
            if c.new_path is not None:
                self._add(_key(c.path), c.op, 0, real)
            self._add(_key(c.new_path or c.path), c.op, c.lines_changed, real)
        self.edits += 1

    def _add(self, name: str, op: str, lines: int, real: Mapping[str, str]) -> None:
        path = real.get(name, name)
        t = self.touched.setdefault(path, Touch(op, 0))
        if name != path and name not in t.links:
            t.links.append(name)
        t.op = op
        t.lines += lines
        self.lines_changed += lines

    def names(self) -> list[str]:
        """Every name of every touched file: real paths and the links edits used (what companions match)."""
        return [n for p, t in self.touched.items() for n in t.names(p)]

    def lines_matching(self, globs: GlobSet | None) -> int:
        """Lines changed in files matching `globs` (all files when None) by their real path or a link an edit
        wrote them through, as the gate judges a change under both."""
        if globs is None:
            return self.lines_changed
        return sum(
            t.lines
            for p, t in self.touched.items()
            if globs.matches(p) or (t.links and any(globs.matches(n) for n in t.links))
        )

    @classmethod
    def from_audit(cls, path: str | Path, session_id: str) -> Session:
        """The session `session_id` rebuilt from the allowed decisions of an audit log (empty if none).

        Never raises for a damaged log: lines that are not UTF-8 JSON objects, and allowed decisions whose
        `changes` are not op/path/new_path/lines of the right types, are skipped with a warning. verify-audit
        reports the damage, and the gate denies every edit while the last record is damaged or the log cannot
        be read, so a session keeps what it can read.
        """
        s = cls(id=session_id)
        skipped = 0
        logged: tuple[list[FileChange], dict[str, str]] | None
        try:
            with open(path, "rb") as f:
                for raw in f:
                    rec = parse_record(raw)
                    if rec is not None and (rec.get("session") != session_id or rec.get("decision") != "allow"):
                        continue
                    logged = _logged_changes(rec.get("changes")) if rec is not None else None
                    if logged is None:
                        skipped += 1
                        continue
                    s.record(*logged)
        except FileNotFoundError:
            return s
        except OSError as e:
            log.warning("cannot read audit log %s to rebuild session %s: %s", path, session_id, e.strerror)
        if skipped:
            log.warning(
                "audit log %s: skipped %d damaged line(s) rebuilding session %s; run `kvblend ledger verify-audit`",
                path,
                skipped,
                session_id,
            )
        return s


def _key(path: str) -> str:
    """The session's name for a file: its normalized path, so that `./src/a.py` and `src//a.py` count as
    `src/a.py` (per-session limits and companions match globs against these names)."""
    try:
        return normalize(path)
    except PathError:  # never for an allowed change; an audit log edited by hand may hold anything
        return path


def _logged_changes(entries: Any) -> tuple[list[FileChange], dict[str, str]] | None:
    """The changes of an audit record (`op`, `path`, `new_path`, `lines` each, and `real_path` / `real_new_path`
    where a path led through a symlink) and the real paths as `Session.record` takes them; None when one is
    malformed."""
    from ledger.changes import FileChange

    if not isinstance(entries, list):
        return None
    out = []
    real: dict[str, str] = {}
    for c in entries:
        if not isinstance(c, dict):
            return None
        op, path, new_path, lines = c.get("op"), c.get("path"), c.get("new_path"), c.get("lines")
        for name, key in ((path, "real_path"), (new_path, "real_new_path")):
            if key in c:
                if not isinstance(name, str) or not isinstance(c[key], str):
                    return None
                real[_key(name)] = _key(c[key])
        if (
            op not in OPS
            or not isinstance(path, str)
            or (op == "rename") != isinstance(new_path, str)
            or (new_path is not None and not isinstance(new_path, str))
            or not isinstance(lines, int)
            or isinstance(lines, bool)
            or lines < 0
        ):
            return None
        out.append(FileChange(op, path, new_path, None, None, lines))
    return out, real


@dataclasses.dataclass(frozen=True)
class TestRun:
    name: str  # a test id or command, e.g. "tests/test_a.py::test_x"
    passed: bool
    detail: str = ""  # the first line of a failure, for the agent


class Ledger:
    """Live facts of a session plus the policy in force; `render()` is what goes into an agent prompt."""

    def __init__(
        self,
        policy: Policy | None = None,
        session: Session | None = None,
        identifiers: list[str] | tuple[str, ...] = (),
        config: LedgerConfig | None = None,
    ) -> None:
        self.config = config or LedgerConfig()
        self.policy = policy if policy is not None else Policy.default(self.config)
        self.session = session if session is not None else Session()
        self.identifiers: list[str] = list(identifiers)
        self.tests: list[TestRun] = []

    def set_identifiers(self, names: list[str] | tuple[str, ...]) -> None:
        self.identifiers = list(dict.fromkeys(names))

    def record_test(self, name: str, passed: bool, detail: str = "") -> None:
        """A test result; a rerun of the same test replaces the earlier one."""
        self.tests = [t for t in self.tests if t.name != name] + [TestRun(name, passed, detail)]

    @property
    def files_touched(self) -> list[str]:
        return list(self.session.touched)

    def constraints(self) -> list[str]:
        lines = self.policy.describe()
        limit = next(
            (r.max_lines_per_session for r in self.policy.rules if r.max_lines_per_session is not None and not r.paths),
            None,
        )
        used = self.session.lines_changed
        lines.append(f"session: {used} lines changed" + (f", {max(limit - used, 0)} left of {limit}" if limit else ""))
        return lines

    def to_dict(self) -> dict:
        return {
            "session": self.session.id,
            "files_touched": {p: dataclasses.asdict(t) for p, t in self.session.touched.items()},
            "identifiers": self.identifiers,
            "tests": [dataclasses.asdict(t) for t in self.tests],
            "constraints": self.constraints(),
        }

    def render(self, max_chars: int | None = None) -> str:
        """A compact text block of at most `max_chars` characters; identifiers are cut first, then the rest."""
        budget = self.config.render_max_chars if max_chars is None else max_chars
        head = ["[kvblend ledger]", "constraints:"] + [f"- {c}" for c in self.constraints()]
        files = ", ".join(f"{p} ({t.op}, {t.lines} lines)" for p, t in self.session.touched.items())
        head.append(f"files touched ({len(self.session.touched)}): {files or 'none'}")
        failing = [t for t in self.tests if not t.passed]
        tests = "; ".join(
            f"{t.name} {'passed' if t.passed else 'FAILED'}" + (f" ({t.detail})" if t.detail and not t.passed else "")
            for t in failing + [t for t in self.tests if t.passed]
        )  # failures first: they are what the agent must act on
        head.append(f"tests run ({len(self.tests)}, {len(failing)} failing): {tests or 'none'}")
        text = "\n".join(head)
        label = f"\nidentifiers ({len(self.identifiers)}): "
        room = budget - len(text) - len(label)
        shown: list[str] = []
        used = 0
        for i, name in enumerate(self.identifiers):
            more = len(f" (+{len(self.identifiers) - i} more)")
            if used + len(name) + 2 + more > room:
                break
            shown.append(name)
            used += len(name) + 2
        rest = len(self.identifiers) - len(shown)
        value = (
            ", ".join(shown) + (f" (+{rest} more)" if rest else "")
            if shown
            else (f"{rest} not shown" if rest else "none")
        )
        if len(value) <= room:
            text += label + value
        if len(text) > budget:
            text = text[: max(budget - 4, 0)] + " ..."
        return text[:budget]
