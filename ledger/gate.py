"""The gate: every write-class operation an agent proposes is decided here before anything touches disk.

`Gate.check(changes)` returns a `Decision` (allow / ask / deny with actionable reasons) and appends it to the
audit log; precedence is documented in `ledger/policy.py` and POLICY.md. The gate fails closed: a policy
that failed to load, a path outside the workspace, a patch that cannot be parsed, or an audit log that cannot
be written each make the decision deny. Only allowed edits count toward the session's limits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ledger.audit import AuditError, AuditLog
from ledger.builtin import VERB, builtin_reasons, own_files, own_reasons, path_reasons, strip_segments
from ledger.changes import AddedLines, FileChange, apply_changes, merge_renames
from ledger.config import LedgerConfig
from ledger.decision import Decision, Reason
from ledger.diff import PatchError, parse_unified_diff, patch_targets
from ledger.facts import Session
from ledger.paths import PathError, WorkspacePath, confine, is_utf8, normalize
from ledger.policy import (
    OPS,
    SEVERITY,
    Policy,
    PolicyError,
    Rule,
    load_policy,
)

log = logging.getLogger(__name__)

_Trigger = tuple[str, str]  # (what fired, what the agent can do instead)


@dataclasses.dataclass
class _Ctx:
    change: FileChange
    forms: tuple[str, ...]  # every name the change writes: lexical and resolved, source and target
    added: AddedLines
    # `forms` plus their trailing-dot/space-stripped variants: what deny and ask globs see (on Windows
    # `vendor./x` is written into `vendor/`), as they also ignore case
    loose: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.loose = tuple(dict.fromkeys(self.forms + tuple(strip_segments(f) for f in self.forms)))


class Gate:
    """Decides on proposed changes under `repo_root`, logs each decision, applies allowed ones on request."""

    def __init__(
        self,
        repo_root: str | Path,
        policy: Policy | None = None,
        audit_path: str | Path | None = None,
        session: Session | None = None,
        *,
        policy_path: str | Path | None = None,
        config: LedgerConfig | None = None,
        before_apply: Callable[[list[FileChange]], None] | None = None,
    ) -> None:
        self.root = Path(repo_root)
        self.config = config or LedgerConfig()
        self.policy_error: str | None = None
        if policy is None:
            try:
                policy = load_policy(self.root, policy_path, self.config)
            except PolicyError as e:
                log.error("policy failed to load, every edit will be denied: %s", e)
                self.policy_error = str(e)
        self.policy = policy
        self.audit = AuditLog(
            audit_path if audit_path is not None else self.root / self.config.audit_file, fsync=self.config.fsync_audit
        )
        self.session = session if session is not None else Session()
        # the files that govern this gate, wherever they are: `--policy` / `--audit` inside the workspace
        # but outside .kvblend/ would otherwise be editable by the agent they constrain
        self._own = own_files(
            self.root,
            {"policy file": policy_path or self.root / self.config.policy_file, "audit log": self.audit.path},
        )
        self.before_apply = before_apply  # e.g. take a capsule of the session, so that undo restores this state
        self._lock = threading.Lock()

    # ---- public ------------------------------------------------------------------------------------------------

    def check(self, changes: list[FileChange], approved: bool = False) -> Decision:
        """The decision on `changes` (one edit), appended to the audit log; allowed edits count in the session.

        `approved=True` (a person confirmed) turns ask into allow; it never lifts a deny. Content rules look at
        the lines `new_text` adds to `old_text`, so `old_text` must be the content the edit is applied to (the
        file on disk, or the server's copy of the open document); `apply_changes` refuses a stale one. A rename
        and edits of its new name that continue it are judged as one change (`merge_renames`).
        """
        changes = merge_renames(changes)
        with self._lock:
            real: dict[str, str] = {}
            if self.policy is None:
                msg = f"{self.policy_error} — every edit is denied until the policy file is fixed"
                decision = Decision("deny", [Reason("policy", msg)])
            else:
                decision, real = self._evaluate(changes)
            if approved and decision.decision == "ask":
                decision = Decision("allow", [*decision.reasons, Reason("approved", "a person approved this edit")])
            return self._record(decision, changes, real=real)

    def check_patch(self, text: str | bytes, approved: bool = False) -> tuple[Decision, list[FileChange]]:
        """Parse the unified diff `text` against the workspace and check it; a patch that cannot be parsed or
        names a path outside the workspace is denied (and logged) like any other edit."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"the patch is not UTF-8 text (byte {e.start}); binary patches cannot be checked"
                return self._reject([Reason("patch", msg)], text.decode("utf-8", errors="replace")), []
        try:
            hard = []
            for op, path in patch_targets(text):  # judge the paths before reading any file
                try:
                    wp = confine(self.root, path)
                    hard += path_reasons(op, wp) or own_reasons(op, wp, self._own)
                except PathError as e:
                    hard.append(Reason("workspace", _path_message(e), e.path))
            if hard:
                return self._reject(_dedupe(hard), text), []
            changes = parse_unified_diff(text, self.root, self.config.max_read_bytes)
        except PathError as e:
            return self._reject([Reason("workspace", _path_message(e), e.path)], text), []
        except PatchError as e:
            reason = Reason("patch", f"{e} — send a text diff whose hunks apply exactly", e.path)
            return self._reject([reason], text), []
        return self.check(changes, approved), changes

    def apply(self, changes: list[FileChange], approved: bool = False) -> Decision:
        """Check `changes`; when allowed, call `before_apply`, then write them (see `apply_changes`)."""
        changes = merge_renames(changes)  # what is judged is what is written
        decision = self.check(changes, approved)
        if decision.allowed:
            self._write(changes)
        return decision

    def apply_patch(self, text: str | bytes, approved: bool = False) -> Decision:
        decision, changes = self.check_patch(text, approved)
        if decision.allowed:
            self._write(changes)
        return decision

    # ---- internals ---------------------------------------------------------------------------------------------

    def _write(self, changes: list[FileChange]) -> None:
        if self.before_apply is not None:
            self.before_apply(changes)
        try:
            apply_changes(self.root, changes)
        except (OSError, ValueError) as e:
            self._audit({"event": "apply_failed", "error": str(e), "changes": _summary(changes)})
            raise
        self._audit({"event": "applied", "changes": _summary(changes)})

    def _audit(self, entry: dict) -> None:
        ns = time.time_ns()  # one clock reading: seconds and fraction from two readings can go back by 1 s
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9 // 1000:06d}Z",
            "session": self.session.id,
            **entry,
        }
        self.audit.append(entry)

    def _record(
        self,
        decision: Decision,
        changes: list[FileChange],
        extra: dict | None = None,
        real: dict[str, str] | None = None,
    ) -> Decision:
        """Log `decision`; an allowed one counts in the session, each file under its `real` path (see
        `Session.record`), which the record keeps too, so that `Session.from_audit` counts it the same way."""
        entry = {
            "event": "decision",
            "decision": decision.decision,
            "changes": _summary(changes, real),
            "reasons": [dataclasses.asdict(r) for r in decision.reasons],
            "policy": self.policy.source if self.policy is not None else None,
            **(extra or {}),
        }
        try:
            self._audit(entry)
        except AuditError as e:
            log.error("%s", e)
            return Decision("deny", [Reason("audit", f"{e} — no edit is allowed while decisions cannot be logged")])
        if decision.allowed:
            self.session.record(changes, real)
        log.info("%s: %d change(s), %d reason(s)", decision.decision, len(changes), len(decision.reasons))
        return decision

    def _reject(self, reasons: list[Reason], patch: str) -> Decision:
        with self._lock:
            digest = hashlib.sha256(patch.encode("utf-8", errors="replace")).hexdigest()
            return self._record(Decision("deny", reasons), [], {"patch_sha256": digest})

    def _evaluate(self, changes: list[FileChange]) -> tuple[Decision, dict[str, str]]:
        """The decision on `changes`, and the real path of each (normalized) path that leads through a symlink."""
        assert self.policy is not None
        if not changes:
            return Decision("deny", [Reason("patch", "the edit changes no file — send at least one change")]), {}
        hard: list[Reason] = []
        ctxs: list[_Ctx] = []
        written: set[str] = set()  # resolved paths of the changes so far
        real: dict[str, str] = {}
        for c in changes:
            try:
                wps = [confine(self.root, p) for p in c.paths]
            except PathError as e:
                hard.append(Reason("workspace", _path_message(e), e.path))
                continue
            real.update((wp.rel, wp.real) for wp in wps if wp.rel != wp.real)
            problem = _change_problem(c, wps, written)
            if problem:
                hard.append(Reason("patch", problem, c.path))
                continue
            ctx = _Ctx(c, tuple(dict.fromkeys(f for wp in wps for f in wp.forms)), AddedLines(c))
            hard += builtin_reasons(ctx.change, ctx.added, wps)
            hard += [r for wp in wps for r in own_reasons(c.op, wp, self._own)]
            ctxs.append(ctx)

        per_change: list[tuple[int, Reason]] = []  # (severity, reason) of each change's deciding rule
        matches = self._rule_matches(ctxs)
        for k, ctx in enumerate(ctxs):
            cands = matches[k]
            if not cands:
                d = self.policy.default_decision
                per_change.append((SEVERITY[d], Reason("default", _default_message(d, ctx.change), ctx.change.path)))
                continue
            rule, trigger = max(cands, key=lambda rt: (rt[0].priority, rt[0].severity))
            per_change.append((rule.severity, Reason(rule.name, _message(rule, trigger), ctx.change.path)))

        if hard:
            reasons = hard + [r for s, r in per_change if s == SEVERITY["deny"]]
            return Decision("deny", _dedupe(reasons)), real
        worst = max(s for s, _ in per_change)
        decision = next(d for d, s in SEVERITY.items() if s == worst)
        return Decision(decision, _dedupe([r for s, r in per_change if s == worst])), real

    def _rule_matches(self, ctxs: list[_Ctx]) -> list[list[tuple[Rule, _Trigger]]]:
        """For each change, the rules that match it, each with what fired."""
        assert self.policy is not None
        out: list[list[tuple[Rule, _Trigger]]] = [[] for _ in ctxs]
        for rule in self.policy.rules:
            scope = [k for k, ctx in enumerate(ctxs) if _in_scope(rule, ctx)]
            if not scope:
                continue
            edit_trigger = self._edit_trigger(rule, [ctxs[k] for k in scope], ctxs)
            if edit_trigger is False:
                continue
            for k in scope:
                trigger = _change_trigger(rule, ctxs[k])
                if trigger is not None:
                    out[k].append((rule, edit_trigger or trigger))
        return out

    def _edit_trigger(self, rule: Rule, scope: list[_Ctx], ctxs: list[_Ctx]) -> _Trigger | None | bool:
        """The edit-wide matchers (line limits, companions): False when one does not hold, None when the rule
        sets none, else what fired (the last of them)."""
        lines = sum(ctx.change.lines_changed for ctx in scope)
        where = f" under {', '.join(rule.paths)}" if rule.paths else ""
        fired: _Trigger | None = None
        if rule.max_lines_per_edit is not None:
            lim = rule.max_lines_per_edit
            if lines <= lim:
                return False
            fired = (
                f"this edit changes {lines} lines{where}, limit {lim}",
                f"split it into edits of at most {lim} lines",
            )
        if rule.max_lines_per_session is not None:
            lim, used = rule.max_lines_per_session, self.session.lines_matching(rule.path_globs)
            if used + lines <= lim:
                return False
            fired = (
                f"the session already changed {used} lines{where} and this edit changes {lines}, limit {lim} per "
                "session",
                f"at most {max(lim - used, 0)} more lines fit in this session; have the work reviewed and start a "
                "new session",
            )
        if rule.require_globs is not None:
            pool = [f for ctx in ctxs for f in ctx.forms]
            if rule.requires_in == "session":
                pool += self.session.names()
            if any(rule.require_globs.matches(p) for p in pool):
                return False
            req = ", ".join(rule.requires)
            fired = (
                f"a change{where} must also touch {req} in the same {rule.requires_in}",
                f"add a change to a file matching {req} to this {rule.requires_in}",
            )
        return fired


def _in_scope(rule: Rule, ctx: _Ctx) -> bool:
    if rule.ops and not any(op in rule.ops for op in ctx.change.ops):
        return False
    forms = ctx.forms if rule.decision == "allow" else ctx.loose
    return rule.path_globs is None or any(rule.path_globs.matches(f) for f in forms)


def _change_problem(c: FileChange, wps: list[WorkspacePath], written: set[str]) -> str | None:
    """Why `c` cannot be judged (and is denied), or None; adds the files it writes to `written`."""
    if c.op not in OPS or (c.op == "rename") != (c.new_path is not None):
        return f"invalid change {c.op!r} of {c.path} (new_path={c.new_path!r})"
    if not all(is_utf8(t) for t in (c.old_text, c.new_text) if t is not None):
        return f"the text of {c.path} is not valid Unicode (a lone surrogate) — send UTF-8 text"
    for wp in wps:
        # Each change is judged against the file as it is now: a second change of the same file (directly or
        # through a symlink) would be applied on top of the first, with lines neither check saw.
        if wp.real in written:
            return f"{wp.rel} is changed twice in one edit — merge the changes of a file into one"
        written.add(wp.real)
    return None


def _change_trigger(rule: Rule, ctx: _Ctx) -> _Trigger | None:
    """What fired, from the per-change matchers (content, file size, else scope); None when one does not hold."""
    c = ctx.change
    target = c.new_path or c.path
    fired: _Trigger | None = None
    if rule.content_regexes:
        label = next((label for label, regex in rule.content_regexes if ctx.added.search(regex)), None)
        if label is None:
            return None
        fired = (f"the added lines of {target} contain {label.replace('_', ' ')}", "remove it")
    if rule.max_file_bytes is not None:
        size = len(c.new_text.encode("utf-8")) if c.new_text is not None else 0
        if size <= rule.max_file_bytes:
            return None
        fired = (
            f"the new {target} is {size} bytes, limit {rule.max_file_bytes}",
            f"keep it under {rule.max_file_bytes} bytes (split the file, or keep generated data out of the repository)",
        )
    if fired is not None:
        return fired
    moved = c.path if c.new_path is None else f"{c.path} to {c.new_path}"
    scope = [", ".join(rule.paths)] if rule.paths else []
    fix = f"change files outside {', '.join(rule.paths)}" if rule.paths else "propose a different change"
    if rule.ops:
        scope.append(f"operations {'/'.join(rule.ops)}")
        if not rule.paths:
            fix = f"use an operation other than {'/'.join(rule.ops)}"
    covered = f" is covered by {' and '.join(scope)}" if scope else " matches"
    return f"{VERB[c.op]} {moved}{covered}", fix


def _message(rule: Rule, trigger: _Trigger) -> str:
    what, fix = trigger
    why = f" ({rule.reason})" if rule.reason else ""
    if rule.decision == "deny":
        return f"rule '{rule.name}': {what}{why} — {fix}" if fix else f"rule '{rule.name}': {what}{why}"
    if rule.decision == "ask":
        return f"rule '{rule.name}': {what}{why} — needs a person's approval; ask the user, or {fix}"
    return f"rule '{rule.name}' allows it: {what}{why}"


def _default_message(decision: str, c: FileChange) -> str:
    if decision == "allow":
        return f"no rule covers {VERB[c.op]} {c.path}; the policy allows it by default"
    if decision == "ask":
        return f"no rule covers {VERB[c.op]} {c.path}; the policy asks a person by default"
    return f"no rule allows {VERB[c.op]} {c.path} and the policy denies by default — ask for a rule that allows it"


def _path_message(e: PathError) -> str:
    return f"{e} — name files by their path relative to the workspace root, inside it"


def _dedupe(reasons: list[Reason]) -> list[Reason]:
    return list(dict.fromkeys(reasons))


def _summary(changes: list[FileChange], real: dict[str, str] | None = None) -> list[dict]:
    """op / path / new_path / lines of each change, plus `real_path` / `real_new_path` where a path leads
    through a symlink to another workspace file (`real` as `_evaluate` resolved it)."""
    out = []
    for c in changes:
        entry = {"op": c.op, "path": c.path, "new_path": c.new_path, "lines": c.lines_changed}
        for key, path in (("real_path", c.path), ("real_new_path", c.new_path)):
            target = _real_of(path, real) if path is not None else None
            if target is not None:
                entry[key] = target
        out.append(entry)
    return out


def _real_of(path: str, real: dict[str, str] | None) -> str | None:
    if not real:
        return None
    try:
        return real.get(normalize(path))
    except PathError:
        return None
