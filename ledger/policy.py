"""The policy: built-in protections plus the rules of `.kvblend/policy.toml` (schema in POLICY.md).

Precedence (the gate applies it):

1. Built-in protections are hard denies, checked before any rule, and no rule can lift them: `.git` and
   `.kvblend` at any depth, secret files by name (`.env*`, `*.pem`, `id_rsa*`, ...), private keys and
   well-known token formats in added lines. Path matching for them ignores case.
2. Of the user rules (and the `[limits]` rules) that match a change, the one with the highest `priority`
   decides; at equal priority deny beats ask beats allow.
3. A change no rule matches gets `[defaults] decision` (allow unless set).
4. An edit (several changes) gets the most severe decision of its changes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

from ledger.config import LedgerConfig
from ledger.paths import GlobSet
from ledger.secrets import SECRET_NAMES, SECRET_PATTERNS

log = logging.getLogger(__name__)

DECISIONS = ("allow", "ask", "deny")
SEVERITY = {"allow": 0, "ask": 1, "deny": 2}
OPS = ("edit", "create", "delete", "rename")

# Directories (or files) agents never write, at any depth: the repository's history and kvblend's own state
# (the policy and the audit log live there).
PROTECTED_PATHS = (".git", ".kvblend")


# Opt-in content presets for rules (`content_presets = [...]`). `passwords` is not built in: literal
# passwords in test fixtures are common enough that a hard deny would get in the way.
CONTENT_PRESETS: dict[str, dict[str, re.Pattern[str]]] = {
    "secrets": SECRET_PATTERNS,
    "passwords": {
        "password_literal": re.compile(
            r"""(?i)\b(?:pass(?:word|wd)?|pwd|secret|api_?key|token)\b["']?\s*[:=]\s*[bru]?["'][^"'\s]{6,}["']"""
        ),
        "url_credentials": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]+@"),
    },
}

_RULE_FIELDS = {
    "name",
    "decision",
    "priority",
    "reason",
    "paths",
    "ops",
    "content",
    "content_presets",
    "forbid_imports",
    "forbid_apis",
    "max_lines_per_edit",
    "max_lines_per_session",
    "max_file_bytes",
    "requires",
    "requires_in",
}
_LIMIT_FIELDS = ("max_lines_per_edit", "max_lines_per_session", "max_file_bytes")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the rule and the field."""


def _import_regex(module: str) -> re.Pattern[str]:
    m = re.escape(module)
    return re.compile(
        rf"^[ \t]*(?:import[ \t]+[^#\n]*?(?<![\w.]){m}(?![\w])|from[ \t]+{m}(?:\.[\w.]+)?[ \t]+import\b)"
        rf"|(?:__import__|import_module)\(\s*[\"']{m}(?:\.[\w.]+)?[\"']",
        re.MULTILINE,
    )


def _content_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled as a `content` matcher; ValueError (never re.error) for one Python cannot compile."""
    try:
        return re.compile(pattern, re.MULTILINE)
    # OverflowError: a repeat count too large (`a{4294967296}`); RecursionError: parentheses nested too deep
    except (re.error, OverflowError, RecursionError) as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None


def _api_regex(api: str) -> re.Pattern[str]:
    # A dotted name matches any reference (`f = os.system` too); a bare name only a call (`eval(`), so that the
    # word in a comment does not trip the rule.
    tail = r"\b" if "." in api else r"\s*\("
    return re.compile(rf"(?<![\w.]){re.escape(api)}{tail}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One policy rule. It matches a change when every matcher it sets holds (no matcher: every change)."""

    name: str
    decision: str  # allow | ask | deny
    priority: int = 0
    reason: str = ""
    paths: tuple[str, ...] = ()  # gitignore-style globs; the change's path (or rename target) must match
    ops: tuple[str, ...] = ()  # edit | create | delete | rename; empty = all
    content: tuple[str, ...] = ()  # regexes searched in the added lines
    content_presets: tuple[str, ...] = ()  # names from CONTENT_PRESETS
    forbid_imports: tuple[str, ...] = ()  # modules whose import in added lines matches
    forbid_apis: tuple[str, ...] = ()  # names (`eval`, `os.system`) whose use in added lines matches
    max_lines_per_edit: int | None = None  # matches when the edit's changed lines under `paths` exceed it
    max_lines_per_session: int | None = None  # ... when the session's allowed lines plus this edit's exceed it
    max_file_bytes: int | None = None  # matches when a new file content exceeds it (UTF-8 bytes)
    requires: tuple[str, ...] = ()  # companion globs: matches when no change of the edit touches one
    requires_in: str = "edit"  # edit | session: where the companion change may be
    # derived
    path_globs: GlobSet | None = dataclasses.field(init=False, repr=False, compare=False)
    require_globs: GlobSet | None = dataclasses.field(init=False, repr=False, compare=False)
    content_regexes: tuple[tuple[str, re.Pattern[str]], ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(
                f"rule {self.name!r}: decision must be one of {', '.join(DECISIONS)}, got {self.decision!r}"
            )
        if not set(self.ops) <= set(OPS) or self.requires_in not in ("edit", "session"):
            raise ValueError(f"rule {self.name!r}: ops must be among {', '.join(OPS)} and requires_in edit or session")
        # deny/ask globs ignore case (a case-insensitive filesystem writes SRC/x into src/); allow globs do not
        ignore_case = self.decision != "allow"
        object.__setattr__(self, "path_globs", GlobSet(self.paths, ignore_case) if self.paths else None)
        object.__setattr__(self, "require_globs", GlobSet(self.requires) if self.requires else None)
        regexes = [(f"/{p}/", _content_regex(p)) for p in self.content]
        for preset in self.content_presets:
            regexes += list(CONTENT_PRESETS[preset].items())
        regexes += [(f"import of {m}", _import_regex(m)) for m in self.forbid_imports]
        regexes += [(f"use of {a}", _api_regex(a)) for a in self.forbid_apis]
        object.__setattr__(self, "content_regexes", tuple(regexes))

    @property
    def severity(self) -> int:
        return SEVERITY[self.decision]

    def summary(self) -> str:
        """One line for the ledger's constraints block."""
        line = f"{self.decision} {'/'.join(self.ops) or 'changes'}"
        if self.paths:
            line += f" in {', '.join(self.paths)}"
        if self.content_regexes:
            line += " adding " + ", ".join(label.replace("_", " ") for label, _ in self.content_regexes)
        if self.requires:
            line += f" without {', '.join(self.requires)} in the same {self.requires_in}"
        for f, unit in (
            ("max_lines_per_edit", "lines per edit"),
            ("max_lines_per_session", "lines per session"),
            ("max_file_bytes", "bytes per file"),
        ):
            if getattr(self, f) is not None:
                line += f" over {getattr(self, f)} {unit}"
        line += f" [{self.name}]"
        return f"{line}: {self.reason}" if self.reason else line


@dataclasses.dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()  # user rules followed by the [limits] rules
    default_decision: str = "allow"  # for a change no rule matches
    source: str | None = None  # the file it was read from; None = built-in defaults only

    @classmethod
    def default(cls, config: LedgerConfig | None = None) -> Policy:
        """Built-in protections and the default limits of `config`: the policy of a repository without a file."""
        cfg = config or LedgerConfig()
        limits = {f: getattr(cfg, f) for f in _LIMIT_FIELDS}
        return cls(rules=_limit_rules(limits, "deny", cfg.limits_priority))

    def describe(self) -> list[str]:
        """Constraints in force, one line each, built-ins first."""
        lines = [
            f"deny any write under {', '.join(p + '/' for p in PROTECTED_PATHS)} (built-in)",
            f"deny secret files ({', '.join(SECRET_NAMES[:6])}, ...) and added private keys/tokens (built-in)",
        ]
        lines += [r.summary() for r in self.rules]
        lines.append(f"{self.default_decision} anything else (default)")
        return lines


def _limit_rules(limits: dict[str, int | None], decision: str, priority: int) -> tuple[Rule, ...]:
    return tuple(
        Rule(name=f"limits.{f}", decision=decision, priority=priority, **{f: v})
        for f, v in limits.items()
        if v is not None
    )


def load_policy(repo_root: str | Path, path: str | Path | None = None, config: LedgerConfig | None = None) -> Policy:
    """The policy of `repo_root`: `path`, else `<repo>/.kvblend/policy.toml`, else the built-in defaults.

    Raises PolicyError naming the file, the rule (index and name) and the field for anything malformed, an
    explicit `path` that does not exist, or a file that cannot be read.
    """
    cfg = config or LedgerConfig()
    file = Path(path) if path is not None else Path(repo_root) / cfg.policy_file
    if not file.exists():
        if path is not None:
            raise PolicyError(f"{file}: policy file not found")
        log.info("no policy file at %s; built-in defaults apply", file)
        return Policy.default(cfg)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyError(f"{file}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{file}: invalid TOML: {e}") from None
    return parse_policy(data, str(file), cfg)


def parse_policy(data: dict[str, Any], source: str = "policy", config: LedgerConfig | None = None) -> Policy:
    """A Policy from the parsed TOML `data` (see POLICY.md); PolicyError on any schema violation."""
    cfg = config or LedgerConfig()
    unknown = set(data) - {"version", "defaults", "limits", "rule"}
    if unknown:
        raise PolicyError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; expected version, defaults, limits, rule"
        )
    if data.get("version", 1) != 1:
        raise PolicyError(f"{source}: field 'version': only version 1 is supported, got {data['version']!r}")

    defaults = _table(data, "defaults", source)
    _no_unknown(defaults, {"decision"}, f"{source}: [defaults]")
    default_decision = defaults.get("decision", "allow")
    if default_decision not in DECISIONS:
        raise PolicyError(
            f"{source}: [defaults] field 'decision': expected one of {', '.join(DECISIONS)}, got {default_decision!r}"
        )

    limits_t = _table(data, "limits", source)
    where = f"{source}: [limits]"
    _no_unknown(limits_t, {*_LIMIT_FIELDS, "decision", "priority"}, where)
    limits = {f: _pos_int(limits_t.get(f, getattr(cfg, f)), where, f, allow_zero=True) for f in _LIMIT_FIELDS}
    limits = {f: (v or None) for f, v in limits.items()}  # 0 turns a limit off
    limit_decision = limits_t.get("decision", "deny")
    if limit_decision not in ("ask", "deny"):
        raise PolicyError(f"{where} field 'decision': expected ask or deny, got {limit_decision!r}")
    limit_priority = limits_t.get("priority", cfg.limits_priority)
    if not isinstance(limit_priority, int) or isinstance(limit_priority, bool):
        raise PolicyError(f"{where} field 'priority': expected an integer, got {limit_priority!r}")

    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: 'rule' must be an array of tables ([[rule]]), got {type(raw_rules).__name__}")
    rules, names = [], set()
    for i, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, f"{source}: rule[{i}]")
        if rule.name in names:
            raise PolicyError(f"{source}: rule[{i}] '{rule.name}' field 'name': duplicate rule name")
        names.add(rule.name)
        rules.append(rule)
    rules += _limit_rules(limits, limit_decision, limit_priority)
    return Policy(tuple(rules), default_decision, source)


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    t = data.get(key, {})
    if not isinstance(t, dict):
        raise PolicyError(f"{source}: '{key}' must be a table ([{key}]), got {type(t).__name__}")
    return t


def _no_unknown(t: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        raise PolicyError(f"{where} field '{extra[0]}': unknown field; expected one of {', '.join(sorted(allowed))}")


def _pos_int(v: Any, where: str, field: str, allow_zero: bool = False) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise PolicyError(f"{where} field '{field}': expected an integer >= {0 if allow_zero else 1}, got {v!r}")
    return v


def _str_list(v: Any, where: str, field: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise PolicyError(f"{where} field '{field}': expected a list of non-empty strings, got {v!r}")
    return tuple(v)


def _parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{where} field 'name': required, a non-empty string (got {name!r})")
    where = f"{where} '{name}'"
    _no_unknown(raw, _RULE_FIELDS, where)
    decision = raw.get("decision")
    if decision not in DECISIONS:
        raise PolicyError(f"{where} field 'decision': required, one of {', '.join(DECISIONS)} (got {decision!r})")
    kw: dict[str, Any] = {"name": name, "decision": decision}
    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PolicyError(f"{where} field 'priority': expected an integer, got {priority!r}")
    kw["priority"] = priority
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        raise PolicyError(f"{where} field 'reason': expected a string, got {reason!r}")
    kw["reason"] = reason
    for field in ("paths", "ops", "content", "content_presets", "forbid_imports", "forbid_apis", "requires"):
        if field in raw:
            kw[field] = _str_list(raw[field], where, field)
    for op in kw.get("ops", ()):
        if op not in OPS:
            raise PolicyError(f"{where} field 'ops': unknown operation {op!r}; expected {', '.join(OPS)}")
    for preset in kw.get("content_presets", ()):
        if preset not in CONTENT_PRESETS:
            raise PolicyError(
                f"{where} field 'content_presets': unknown preset {preset!r}; expected {', '.join(CONTENT_PRESETS)}"
            )
    for pat in kw.get("content", ()):
        try:
            _content_regex(pat)
        except ValueError as e:
            raise PolicyError(f"{where} field 'content': {e}") from None
    for field in ("paths", "requires"):
        for glob in kw.get(field, ()):
            try:
                GlobSet([glob])
            except ValueError as e:
                raise PolicyError(f"{where} field '{field}': {e}") from None
    for field in ("forbid_imports", "forbid_apis"):
        for ident in kw.get(field, ()):
            if not re.fullmatch(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*", ident):
                raise PolicyError(f"{where} field '{field}': {ident!r} is not a dotted Python name")
    for field in _LIMIT_FIELDS:
        if field in raw:
            kw[field] = _pos_int(raw[field], where, field)
    requires_in = raw.get("requires_in", "edit")
    if requires_in not in ("edit", "session"):
        raise PolicyError(f"{where} field 'requires_in': expected edit or session, got {requires_in!r}")
    if "requires_in" in raw and "requires" not in kw:
        raise PolicyError(f"{where} field 'requires_in': only meaningful together with 'requires'")
    kw["requires_in"] = requires_in
    try:
        return Rule(**kw)
    except ValueError as e:  # a last resort: every field was checked above
        raise PolicyError(f"{where}: {e}") from None
