"""Per-mode aggregates, results.json, the markdown summary table and the PNG plots of `kvblend eval`."""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from kvblend.eval.config import ModeSpec
from kvblend.eval.metrics import mean, percentile

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "summary.md")
PLOT_FILES = ("quality_vs_ratio.png", "ttft_vs_context.png")
STAGING_PREFIX = ".kvblend-eval-"  # a run's files are written into OUT/.kvblend-eval-XXXX/ first (write_all)
QUALITY_KEYS = ("exact_match", "edit_similarity", "identifier_match", "agreement_with_full", "first_token_agreement")
TABLE_COLUMNS = (
    ("mode", "mode"), ("n", "n"), ("exact_match", "exact"), ("edit_similarity", "edit sim"),
    ("identifier_match", "ident F1"), ("agreement_with_full", "agree full"), ("first_token_agreement", "agree 1st"),
    ("ttft_ms_p50", "TTFT p50 ms"), ("ttft_ms_p95", "TTFT p95 ms"), ("total_ms_p50", "total p50 ms"),
    ("total_ms_p95", "total p95 ms"), ("tokens_recomputed", "recomputed"), ("kv_bytes_loaded", "KV MB loaded"),
)  # fmt: skip


def aggregate(records: list[dict], specs: list[ModeSpec]) -> dict[str, dict]:
    """Per mode: means of the quality metrics, p50/p95 of TTFT and total latency, mean tokens recomputed and
    KV bytes loaded per request, and the KV paths the Completer took."""
    out: dict[str, dict] = {}
    for spec in specs:
        rows = [r for r in records if r["mode"] == spec.label]
        ttft, total = [r["ttft_ms"] for r in rows], [r["total_ms"] for r in rows]
        out[spec.label] = {
            "n": len(rows),
            "recompute_ratio": spec.ratio if spec.ratio is not None else {"full": 1.0, "naive": 0.0}.get(spec.label),
            "exact_match": _r(mean([r["exact_match"] for r in rows]), 4),
            "edit_similarity": _r(mean([r["edit_similarity"] for r in rows]), 4),
            "identifier_match": _r(mean([r["identifier_match"] for r in rows]), 4),
            "agreement_with_full": _r(mean([r["agree_output"] for r in rows]), 4),
            "first_token_agreement": _r(mean([r["agree_first_token"] for r in rows]), 4),
            "ttft_ms_p50": _r(percentile(ttft, 50), 1),
            "ttft_ms_p95": _r(percentile(ttft, 95), 1),
            "total_ms_p50": _r(percentile(total, 50), 1),
            "total_ms_p95": _r(percentile(total, 95), 1),
            "tokens_recomputed": _r(mean([r["tokens_recomputed"] for r in rows]), 1),
            "prompt_tokens": _r(mean([r["prompt_tokens"] for r in rows]), 1),
            "kv_bytes_loaded": _r(mean([r["kv_bytes_loaded"] for r in rows]), 0),
            "kv_paths": dict(sorted(collections.Counter(r["kv_path"] for r in rows).items())),
        }
    return out


def _r(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(x, digits)


def table(modes: dict[str, dict]) -> str:
    """The per-mode markdown table (also what `kvblend eval` prints)."""
    lines = ["| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for label, m in modes.items():
        cells = []
        for key, _ in TABLE_COLUMNS:
            v = label if key == "mode" else m.get(key)
            if key == "kv_bytes_loaded" and v is not None:
                v = f"{v / 1e6:.1f}"
            elif isinstance(v, float) and key in QUALITY_KEYS:
                v = f"{v:.3f}"
            elif isinstance(v, float):
                v = f"{v:.1f}"
            cells.append("-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_all(
    out: Path, config: dict, modes: dict[str, dict], records: list[dict], notes: list[str], plots: bool
) -> list[Path]:
    """results.json, summary.md and (with `plots`) the PNGs under `out`. They are written into a staging
    directory first and renamed into place after, so an error or Ctrl-C while writing leaves the files of an
    earlier run whole, never a half-written one. Plots of an earlier run go when this one makes none: next to
    its results they would read as this run's."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        files = [write_results(stage, config, modes, records, notes), write_summary(stage, config, modes, notes)]
        if plots:
            files += write_plots(stage, modes, records)
        placed = []
        for f in files:
            os.replace(f, out / f.name)
            placed.append(out / f.name)
        for name in () if plots else PLOT_FILES:
            (out / name).unlink(missing_ok=True)
        return placed
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_results(out: Path, config: dict, modes: dict[str, dict], records: list[dict], notes: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({"config": config, "modes": modes, "notes": notes, "items": records}, indent=1) + "\n")
    return path


def write_summary(out: Path, config: dict, modes: dict[str, dict], notes: list[str]) -> Path:
    c = config
    head = [
        f"# kvblend eval: {Path(c['dataset']).resolve().name}",
        "",
        f"{c['kind']}, n = {c['n_items']} items (seed {c['seed']}, limit {c['limit']}), model `{c['model']}`, "
        f"device {c['device']}, {c['machine']}.",
        "",
        table(modes),
        "",
    ]
    head += [f"- {n}" for n in notes]
    path = out / "summary.md"
    path.write_text("\n".join(head).rstrip() + "\n")
    return path


def write_plots(out: Path, modes: dict[str, dict], records: list[dict]) -> list[Path]:
    """quality_vs_ratio.png (modes with a recompute ratio: naive 0, blend r, full 1) and ttft_vs_context.png
    (every request: prompt tokens vs TTFT, one colour per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    pts = sorted((m["recompute_ratio"], label) for label, m in modes.items() if m["recompute_ratio"] is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("exact_match", "edit_similarity", "identifier_match", "agreement_with_full", "first_token_agreement"):
        ax.plot([x for x, _ in pts], [modes[lab][key] for _, lab in pts], marker="o", label=key)
    for label, m in modes.items():
        if m["recompute_ratio"] is None:  # prefix, none, capsule: no ratio; shown as a dashed agreement level
            ax.axhline(m["agreement_with_full"], ls="--", lw=0.8, color="grey")
            ax.annotate(f"{label} agreement", (0.0, m["agreement_with_full"]), fontsize=7, color="grey")
    ax.set_ylim(-0.02, 1.02)
    labels = ("recompute ratio (naive = 0, full = 1)", "score", "quality vs recompute ratio")
    paths.append(_save(fig, ax, out / "quality_vs_ratio.png", *labels))

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in modes:
        rows = [r for r in records if r["mode"] == label]
        ax.scatter([r["prompt_tokens"] for r in rows], [r["ttft_ms"] for r in rows], s=12, label=label)
    labels = ("prompt tokens (context chunks + local prompt)", "TTFT ms", "time to first token vs context length")
    paths.append(_save(fig, ax, out / "ttft_vs_context.png", *labels))
    return paths


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, title and legend the axes, write `path` and close the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
