"""ledger: repository policy, typed session facts, the edit gate and its audit log (no torch import).

See POLICY.md for the policy file and README "Ledger" for the commands.
"""

from ledger.audit import AuditError, AuditLog, verify_audit
from ledger.changes import FileChange, apply_changes
from ledger.config import LedgerConfig
from ledger.diff import PatchError, parse_unified_diff, patch_targets
from ledger.facts import Ledger, Session, TestRun
from ledger.gate import Decision, Gate, Reason
from ledger.paths import PathError, confine, normalize
from ledger.policy import Policy, PolicyError, Rule, load_policy

__all__ = [
    "AuditError",
    "AuditLog",
    "Decision",
    "FileChange",
    "Gate",
    "Ledger",
    "LedgerConfig",
    "PatchError",
    "PathError",
    "Policy",
    "PolicyError",
    "Reason",
    "Rule",
    "Session",
    "TestRun",
    "apply_changes",
    "confine",
    "load_policy",
    "normalize",
    "parse_unified_diff",
    "patch_targets",
    "verify_audit",
]
