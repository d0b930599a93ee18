"""Settings of one `kvblend eval` run (fixed for the run; per-item state lives in the runner)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kvblend.settings import Settings

# Modes the runner knows. full, naive, prefix, none and blend are the Completer's context modes; capsule is
# the warm-session path (the request was served before; see runner.py).
MODES = ("full", "naive", "prefix", "blend", "capsule", "none")
DEFAULT_MODES = ("full", "naive", "blend")  # with repository context
DEFAULT_MODES_NO_CONTEXT = ("full",)  # without context every mode is a full prefill of the local prompt


@dataclasses.dataclass(frozen=True)
class ModeSpec:
    label: str  # key in results.json: full, naive, prefix, none, capsule, blend_r0.15
    mode: str  # the Completer's Settings.mode
    ratio: float | None = None  # blend's recompute ratio
    warm: bool = False  # capsule: the request is served once, untimed, before the timed one


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    dataset: Path  # a .jsonl / .jsonl.gz file or a repository directory
    out: Path  # results.json, summary.md and the plots go here
    model: Path | None = None  # None: the bundled model
    device: str | None = None
    modes: tuple[str, ...] | None = None  # None: DEFAULT_MODES, or DEFAULT_MODES_NO_CONTEXT when items have none
    ratios: tuple[float, ...] = (0.15,)  # one blend run per ratio (CacheBlend's default r)
    limit: int | None = None  # first N items after the seeded shuffle
    seed: int = 0
    cache_dir: Path | None = None  # chunk KV disk tier of a repository; None: <repo>/.kvblend/cache
    context_tokens: int = 3072  # Settings.context_tokens: what users get
    plots: bool = True
    engine: str = "torch"  # torch (ours) | vllm: requests go through kvblend.engine.make_engine

    def __post_init__(self) -> None:
        if self.modes is not None:
            unknown = [m for m in self.modes if m not in MODES]
            if unknown or not self.modes:
                raise ValueError(f"unknown modes {unknown or list(self.modes)}: choose from {', '.join(MODES)}")
        if not self.ratios or any(not 0.0 <= r <= 1.0 for r in self.ratios):
            raise ValueError(f"--ratios must be in [0, 1], got {list(self.ratios)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        try:  # Settings' own range, checked here so that a bad value fails before the model loads
            Settings(context_tokens=self.context_tokens)
        except ValueError as e:
            raise ValueError(f"--context-tokens: {e}") from None

    def specs(self, has_context: bool) -> list[ModeSpec]:
        """The modes to run, `full` first (every other mode's agreement is measured against it)."""
        modes = self.modes or (DEFAULT_MODES if has_context else DEFAULT_MODES_NO_CONTEXT)
        out = [ModeSpec("full", "full")]
        for m in modes:
            if m == "blend":
                out += [ModeSpec(f"blend_r{r:g}", "blend", r) for r in self.ratios]
            elif m == "capsule":
                out.append(ModeSpec("capsule", "full", warm=True))
            elif m != "full":
                out.append(ModeSpec(m, m))
        seen: set[str] = set()
        return [s for s in out if not (s.label in seen or seen.add(s.label))]
