"""Completion settings: one dataclass, defaults with their reasons, and validation of client-supplied values.

Editors send settings as camelCase JSON (LSP `initializationOptions`, `workspace/didChangeConfiguration`);
`Settings.from_options` maps them onto the dataclass, keeps the default for every invalid value and returns
a warning per problem (the server shows them; nothing fails).
"""

from __future__ import annotations

import dataclasses
from typing import Any

CONTEXT_MODES = ("blend", "naive", "full", "prefix", "none")


@dataclasses.dataclass(frozen=True)
class Settings:
    # How the repository context is built: blend (CacheBlend), naive (reuse, no recompute), full (prefill
    # everything: the slow reference), prefix (exact prefix reuse of the repository header), none (local
    # prompt only).
    mode: str = "blend"
    recompute_ratio: float = 0.15  # CacheBlend's r: the paper's default and ours (README, bench blend)
    context_tokens: int = 3072  # retrieved chunks; with the local prompt ~4k, the bundled model's window
    prefix_tokens: int = 768  # text before the cursor in the local prompt
    suffix_tokens: int = 256  # text after the cursor
    fim_order: str = "auto"  # psm | spm | auto (the model's preference: kvblend.json, else psm)
    multiline: str = "auto"  # auto (from the cursor's position) | always | never
    max_tokens: int = 64  # a block's token budget
    max_line_tokens: int = 32  # a single line's
    time_budget_ms: int = 2000  # decoding stops here and returns what it has
    debounce_ms: int = 10  # a request waits this long for a newer one before starting (keystroke bursts)
    session_reuse: bool = True  # reuse a document's live KV: prefill only past the longest common prefix
    result_cache: int = 128  # recent results kept for typed-through and repeated requests (0: off)
    temperature: float = 0.0  # greedy by default: completions should be stable across requests
    warmup_ms: int = 400  # idle time after an edit before the next request's context is prepared (0: off)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        for f in dataclasses.fields(self):
            msg = _check(f.name, getattr(self, f.name))
            if msg:
                out.append(msg)
        return out

    @classmethod
    def from_options(cls, options: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
        """Settings from a client's JSON object (camelCase or snake_case keys), invalid values left at the
        base's (default: the defaults), with one warning per unknown key or invalid value."""
        base = base or cls()
        if options is None:
            return base, []
        if not isinstance(options, dict):
            return base, [f"settings must be an object, got {type(options).__name__}: ignored"]
        if isinstance(options.get("kvblend"), dict):  # VS Code sends the section under its name
            options = options["kvblend"]
        names = {f.name for f in dataclasses.fields(cls)}
        values, warnings = {}, []
        for key, value in options.items():
            name = _snake(str(key))
            if name not in names:
                if name not in _CLIENT_KEYS:
                    warnings.append(f"unknown setting {key!r}: ignored")
                continue
            msg = _check(name, value)
            if msg:
                warnings.append(f"{msg}: using {getattr(base, name)!r}")
                continue
            values[name] = float(value) if _FIELDS[name] is float else value
        return dataclasses.replace(base, **values), warnings


# Keys the clients send for themselves (the server reads them elsewhere), not completion settings.
_CLIENT_KEYS = {"model", "device", "redis_url", "cache_dir", "enable", "log_level", "server_path", "cmd"}

_FIELDS = {
    "mode": str, "recompute_ratio": float, "context_tokens": int, "prefix_tokens": int, "suffix_tokens": int,
    "fim_order": str, "multiline": str, "max_tokens": int, "max_line_tokens": int, "time_budget_ms": int,
    "debounce_ms": int, "session_reuse": bool, "result_cache": int, "temperature": float, "warmup_ms": int,
}  # fmt: skip
_CHOICES = {"mode": CONTEXT_MODES, "fim_order": ("auto", "psm", "spm"), "multiline": ("auto", "always", "never")}
_RANGES = {
    "recompute_ratio": (0.0, 1.0), "context_tokens": (0, 1 << 17), "prefix_tokens": (16, 1 << 16),
    "suffix_tokens": (0, 1 << 16), "max_tokens": (1, 4096), "max_line_tokens": (1, 4096),
    "time_budget_ms": (1, 600_000), "debounce_ms": (0, 10_000), "result_cache": (0, 1 << 16),
    "temperature": (0.0, 10.0), "warmup_ms": (0, 600_000),
}  # fmt: skip


def _check(name: str, value: Any) -> str | None:
    kind = _FIELDS[name]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        return f"setting {name} must be a {kind.__name__}, got {value!r}"
    if name in _CHOICES and value not in _CHOICES[name]:
        return f"setting {name} must be one of {', '.join(_CHOICES[name])}, got {value!r}"
    if name in _RANGES:
        lo, hi = _RANGES[name]
        if not lo <= value <= hi:
            return f"setting {name} must be in [{lo}, {hi}], got {value!r}"
    return None


def _snake(key: str) -> str:
    out = []
    for ch in key:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out).lstrip("_")
