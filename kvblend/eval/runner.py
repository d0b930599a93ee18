"""Run every mode on every item through the real Completer, and collect per-item records.

Each mode is a `Completer` with the settings users would get for it, except: greedy decoding, no time
budget to speak of (600 s), no result cache and no session reuse, so every request builds its KV the mode's
way. Items are grouped by their context (a repository, a set of inline files, or none); a group's workspace
is indexed once, with chunk KV computed on first use (`IndexerConfig.precompute=False`) and no commit
summaries (a recent commit's diff may hold the very line of a hole). Before the timed requests of an item, a
`naive` Completer's `warm` fetches (and if needed computes) the chunks retrieval picks for it, so timed
requests read chunk KV from the store as in steady use.

`capsule` is the warm-session path: the same request is served once, untimed, by a Completer with
`session_reuse=True` in mode `full`; the timed second request finds the document's live KV and prefills
only the prompt's last token (the next keystroke of a user whose context has not changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from blend.loader import LoadedModel
from indexer.chunker import Chunk
from indexer.config import DEFAULT_IGNORES, IndexerConfig
from indexer.indexer import Indexer
from kvblend.completer import Completer
from kvblend.completion import CompletionRequest
from kvblend.eval import metrics, report
from kvblend.eval.config import EvalConfig, ModeSpec
from kvblend.eval.datasets import EvalItem
from kvblend.settings import Settings

log = logging.getLogger(__name__)

STORED_BYTES_PER_VALUE = 2  # chunk KV is stored in fp16 by every tier (indexer/serde.py)
TIME_BUDGET_MS = 600_000  # decoding is never cut by the clock: every mode decodes the same way


class CountingIndexer(Indexer):
    """An Indexer that counts the chunk tokens whose KV requests read from the store (`get_kv`)."""

    loaded_tokens = 0

    def get_kv(self, chunk: Chunk):
        kv = super().get_kv(chunk)
        self.loaded_tokens += len(kv)
        return kv


def kv_bytes_per_token(lm: LoadedModel) -> int:
    """Stored bytes of one token's chunk KV: k and v over all layers and KV heads, fp16."""
    c = lm.config
    return 2 * c.n_layers * c.n_kv_heads * c.head_dim * STORED_BYTES_PER_VALUE


def settings_for(spec: ModeSpec, multiline: bool, context_tokens: int) -> Settings:
    return Settings(
        mode=spec.mode, recompute_ratio=spec.ratio if spec.ratio is not None else Settings.recompute_ratio,
        context_tokens=context_tokens, multiline="always" if multiline else "never", time_budget_ms=TIME_BUDGET_MS,
        session_reuse=spec.warm, result_cache=0, temperature=0.0,
    )  # fmt: skip


@contextlib.contextmanager
def workspace(
    item: EvalItem, lm: LoadedModel, cache_dir: Path | None, out: Path | None = None
) -> Iterator[CountingIndexer | None]:
    """The indexed context of `item`'s group: its repository, a temp workspace of its inline files, or None.
    What the run writes into `out` is never indexed (see `output_ignores`)."""
    if item.repo is None and not item.context_files:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="kvblend-eval-") as tmp:
        if item.repo is not None:
            root, cache = Path(item.repo), cache_dir
        else:
            root, cache = Path(tmp) / "ws", Path(tmp) / "cache"
            for rel, text in sorted(item.context_files.items()):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text(text, encoding="utf-8")
        ignores = DEFAULT_IGNORES + (output_ignores(root, out) if out is not None else ())
        idx = CountingIndexer(IndexerConfig(root, cache_dir=cache, n_commits=0, precompute=False, ignores=ignores), lm)
        try:
            stats = idx.index()
            log.info("eval: indexed %s: %d files, %d chunks, %d tokens", root, stats.files, stats.chunks, stats.tokens)
            yield idx
        finally:
            idx.close()


def output_ignores(root: Path, out: Path) -> tuple[str, ...]:
    """gitignore patterns for the files `kvblend eval` writes into `out`, when `out` lies inside the workspace
    `root` (`--dataset . --out runs/x` with runs/ not git-ignored): an earlier run's results.json holds every
    reference, and indexed it would be retrieved as context for the very holes it answers."""
    try:
        rel = out.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:  # outside the workspace
        return ()
    base = "" if rel == "." else re.sub(r"([*?\[\\])", r"\\\1", rel) + "/"  # glob characters taken literally
    names = (*report.RESULT_FILES, *report.PLOT_FILES)
    return tuple(f"/{base}{name}" for name in names) + (f"/{base}{report.STAGING_PREFIX}*/",)


def _groups(items: list[EvalItem]) -> list[list[EvalItem]]:
    """Items grouped by context, groups in order of first appearance (items keep their order within)."""
    groups: dict = {}
    for it in items:
        groups.setdefault(it.context_key(), []).append(it)
    return list(groups.values())


def run_items(
    lm: LoadedModel,
    items: list[EvalItem],
    specs: list[ModeSpec],
    cfg: EvalConfig,
    progress: Callable[[int, int], None] | None = None,
    engine=None,
) -> list[dict]:
    """One record per (item, mode), items in the given order, modes in `specs` order (full first)."""
    total, done = len(items) * len(specs), 0
    per_token = kv_bytes_per_token(lm)
    records: list[dict] = []
    for group in _groups(items):
        with workspace(group[0], lm, cfg.cache_dir, cfg.out) as idx:
            completers: dict[tuple[str, bool], Completer] = {}

            def completer(spec: ModeSpec, multiline: bool, idx=idx, completers=completers) -> Completer:
                key = (spec.label, multiline)
                if key not in completers:
                    settings = settings_for(spec, multiline, cfg.context_tokens)
                    completers[key] = Completer(lm, settings, idx, engine=engine)
                return completers[key]

            for i, item in enumerate(group):
                req = CompletionRequest(item.path, item.text, item.cursor)
                if idx is not None:  # chunk KV into the store (computed on first use), untimed
                    completer(dataclasses.replace(specs[0], label="_prepare", mode="naive"), item.multiline).warm(req)
                if i == 0:  # first requests of a group pay one-time costs (header KV, allocator): untimed
                    for spec in specs:
                        completer(spec, item.multiline).complete(req)
                rows = []
                for spec in specs:
                    c = completer(spec, item.multiline)
                    if spec.warm:
                        c.complete(req)
                    if idx is not None:
                        idx.loaded_tokens = 0
                    result = c.complete(req)
                    loaded = idx.loaded_tokens if idx is not None else 0
                    rows.append(_record(item, spec, result, loaded * per_token))
                    done += 1
                    if progress is not None:
                        progress(done, total)
                _agreement(rows)
                records += rows
    return records


def _record(item: EvalItem, spec: ModeSpec, result, kv_bytes: int) -> dict:
    t = result.timings_ms
    total = t.get("total", 0.0)
    return {
        "id": item.id,
        "mode": spec.label,
        "prediction": result.text,
        "reference": item.middle,
        "exact_match": metrics.exact_match(result.text, item.middle),
        "edit_similarity": round(metrics.edit_similarity(result.text, item.middle), 6),
        "identifier_match": round(metrics.identifier_match(result.text, item.middle), 6),
        "first_token": result.first_token,
        "ttft_ms": round(total - t.get("decode", 0.0), 3),  # everything before the first decode step
        "total_ms": round(total, 3),
        "tokens_recomputed": result.tokens_prefilled,
        "tokens_reused": result.tokens_reused,
        "prompt_tokens": result.tokens_prefilled + result.tokens_reused,
        "kv_bytes_loaded": kv_bytes,
        "kv_path": result.kv_path,
        "stop_reason": result.stop_reason,
        "timings_ms": dict(t),  # the Completer's stages: prompt, retrieve, kv_load, blend | prefill, decode, total
        "context": result.context,
    }


def _agreement(rows: list[dict]) -> None:
    """Agreement of every mode's greedy output with `full`'s on the same item (rows[0] is full)."""
    ref = rows[0]
    assert ref["mode"] == "full", ref["mode"]
    for r in rows:
        r["agree_first_token"] = float(r["first_token"] == ref["first_token"])
        r["agree_output"] = float(r["prediction"] == ref["prediction"])


def evaluate(cfg: EvalConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Load the dataset and the model, run every mode on every item, write results.json, summary.md and the
    plots under `cfg.out`; returns {"config", "modes", "notes", "items", "files"}."""
    import os
    import platform

    import torch

    from blend.loader import load_model
    from kvblend.eval.datasets import load_dataset

    kind, items = load_dataset(cfg.dataset, cfg.seed, cfg.limit)
    has_context = any(it.context_key() is not None for it in items)
    specs = cfg.specs(has_context)
    lm = load_model(cfg.model, device=cfg.device)
    device = lm.model.device
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    if cfg.engine == "torch":
        records = run_items(lm, items, specs, cfg, progress)
    else:
        from kvblend.engine import make_engine

        with make_engine(cfg.engine, lm) as engine:
            records = run_items(lm, items, specs, cfg, progress, engine)
    modes = report.aggregate(records, specs)
    notes = _notes(has_context, specs, modes)
    config = {
        "dataset": str(cfg.dataset), "kind": kind, "n_items": len(items), "seed": cfg.seed, "limit": cfg.limit,
        "modes": [s.label for s in specs], "ratios": list(cfg.ratios), "model": lm.path.name,
        "fingerprint": lm.fingerprint, "device": str(device), "machine": machine, "torch": torch.__version__,
        "context_tokens": cfg.context_tokens, "kv_bytes_per_token": kv_bytes_per_token(lm), "engine": cfg.engine,
    }  # fmt: skip
    files = report.write_all(cfg.out, config, modes, records, notes, cfg.plots)
    return {"config": config, "modes": modes, "notes": notes, "items": records, "files": [str(f) for f in files]}


def _notes(has_context: bool, specs: list[ModeSpec], modes: dict[str, dict]) -> list[str]:
    notes = []
    if not has_context:
        notes.append("no repository context: every mode prefills the local prompt in full (kv_path 'full'), "
                     "so modes other than full differ from it only by timing noise")  # fmt: skip
    if any(s.warm for s in specs):
        notes.append("capsule: the request was served once before (untimed, mode full, session reuse on); "
                     "the timed request resumes the document's live KV and prefills only the prompt's last "
                     "token")  # fmt: skip
    for label, m in modes.items():
        spec = next(s for s in specs if s.label == label)
        expected = "session" if spec.warm else ("full" if spec.mode == "none" else spec.mode)
        other = {k: v for k, v in m["kv_paths"].items() if k != expected}
        if other and has_context:
            notes.append(f"{label}: the Completer took other KV paths for some requests: {other} "
                         "(an item with no retrieved chunk is a full prefill)")  # fmt: skip
    notes.append("exact / edit sim / ident F1: prediction vs reference middle; agree full / agree 1st: whole greedy "
                 "output / first sampled token equal to mode full's on the same item; TTFT = Completer total - "
                 "decode; recomputed = tokens run through the model per request (mean); KV MB loaded = chunk KV "
                 "read from the store per request (mean, fp16 as stored)")  # fmt: skip
    return notes
