"""`LedgerConfig`: the ledger's fixed settings (file locations, default limits, render budget)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LedgerConfig:
    # Where a repository keeps its policy and audit log; `.kvblend/` itself is protected, so an agent can
    # neither loosen the policy nor rewrite the log.
    policy_file: str = ".kvblend/policy.toml"
    audit_file: str = ".kvblend/audit.jsonl"
    # Limits in force when the policy file sets none: large enough for any reviewable edit, small enough that
    # a runaway agent cannot rewrite the repository in one go. A policy's [limits] table replaces them.
    max_lines_per_edit: int = 2000
    max_lines_per_session: int = 20000
    max_file_bytes: int = 1_000_000
    # Limit rules outrank ordinary rules (priority 0) so that an allow exception does not lift a limit.
    limits_priority: int = 100
    # fsync each audit line: durable across a power cut, but ~100x slower on most disks; off by default
    # because the hash chain already detects a torn last line.
    fsync_audit: bool = False
    # Budget of the block rendered into agent prompts (characters); identifiers are trimmed first.
    render_max_chars: int = 2000
    # Files larger than this are never read for an edit (a patch to them is rejected as too large).
    max_read_bytes: int = 16_000_000
