"""capsule: snapshot / restore / fork / undo editing sessions in full execution state (DESIGN.md, "Capsules").

`snapshot` a live cache into an immutable `Capsule`, `restore` it (O(1), copy-on-write) or `fork` it, keep
capsules in a `CapsuleStore` (RAM budget, LRU spill to disk, reload) and per document in a `SessionTree`.
"""

from capsule.capsule import (
    FORMAT_VERSION,
    Capsule,
    CapsuleError,
    RestoredState,
    fork,
    restore,
    resume_logits,
    snapshot,
    text_hash,
)
from capsule.config import CapsuleConfig
from capsule.serde import CapsuleFormatError
from capsule.store import CapsuleStore
from capsule.tree import SessionTree

__all__ = [
    "FORMAT_VERSION",
    "Capsule",
    "CapsuleConfig",
    "CapsuleError",
    "CapsuleFormatError",
    "CapsuleStore",
    "RestoredState",
    "SessionTree",
    "fork",
    "restore",
    "resume_logits",
    "snapshot",
    "text_hash",
]
