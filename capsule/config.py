"""Settings of the capsule store (fixed for a server; per-session state lives in `SessionTree`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

# Free KV slots allocated behind every capsule: the first session restored from it appends there without a
# copy. 256 covers a <=16-token edit delta plus a 64-token completion with room to spare; at 6 KiB/token
# (bundled model, fp32) that is 1.5 MiB per capsule, at ~28 KiB/token (a 1.5B model in bf16) ~7 MiB.
SPARE_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class CapsuleConfig:
    memory_bytes: int = 1 << 30  # live capsules in RAM; a 16k-token capsule of the bundled model is ~100 MiB
    disk_dir: Path | None = None  # spill target; None: capsules over the memory budget are dropped
    disk_bytes: int = 8 << 30  # least recently used capsule files beyond this are deleted
    spare_tokens: int = SPARE_TOKENS  # free slots behind a reloaded capsule (see SPARE_TOKENS)
    fsync: bool = False  # rename is atomic against kill -9 without it; fsync only buys power-loss safety

    def __post_init__(self) -> None:
        if self.memory_bytes < 0 or self.disk_bytes < 0:
            raise ValueError(f"byte budgets must be >= 0, got {self.memory_bytes}, {self.disk_bytes}")
        if self.spare_tokens < 0:
            raise ValueError(f"spare_tokens must be >= 0, got {self.spare_tokens}")
        if self.disk_dir is not None and not isinstance(self.disk_dir, Path):
            object.__setattr__(self, "disk_dir", Path(self.disk_dir))
