"""What the gate decides: allow, ask or deny, with a reason per finding."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reason:
    rule: str  # the rule's name, or builtin.*, workspace, patch, policy, audit, default
    message: str  # what happened and what would be allowed instead
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    decision: str  # allow | ask | deny
    reasons: list[Reason]

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_dict(self) -> dict:
        return {"decision": self.decision, "reasons": [dataclasses.asdict(r) for r in self.reasons]}

    def format(self) -> str:
        lines = [self.decision]
        lines += [f"  - {r.message}" for r in self.reasons]
        return "\n".join(lines)
