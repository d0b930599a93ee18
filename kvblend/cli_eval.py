"""`kvblend eval`: the parser and the handler (the evaluation itself lives in kvblend/eval/)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from kvblend.eval.config import MODES
from kvblend.eval.report import STAGING_PREFIX


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="batch completion evaluation: quality, fidelity and latency per mode",
        description="Run each mode on identical fill-in-the-middle items through the Completer; write "
        "OUT/results.json, OUT/summary.md and plots; print the per-mode table.",
    )
    e.add_argument("--dataset", required=True, type=Path,
                   help="a repository directory (repository holes), or a HumanEval infilling / own-format "
                        ".jsonl[.gz] file (kvblend/eval/FORMAT.md)")  # fmt: skip
    e.add_argument("--model", type=Path, default=None, help="HF-format checkpoint directory (default: bundled model)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--modes", default=None,
                   help=f"comma-separated, from {','.join(MODES)} (full always runs; default: full,naive,blend "
                        "with repository context, full without)")  # fmt: skip
    e.add_argument("--ratios", default="0.15", help="blend recompute ratios, comma-separated (default 0.15)")
    e.add_argument("--limit", type=int, default=None, help="first N items after the seeded shuffle")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, type=Path, help="output directory")
    e.add_argument("--cache-dir", type=Path, default=None, help="chunk KV disk tier (default: REPO/.kvblend/cache)")
    e.add_argument("--context-tokens", type=int, default=3072, help="retrieved context budget (Settings default)")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    e.add_argument("--engine", choices=("torch", "vllm"), default="torch",
                   help="torch: our engine; vllm: vLLM fed blended KV (its own venv, see README 'vLLM')")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from kvblend.eval.config import EvalConfig
    from kvblend.eval.report import table
    from kvblend.eval.runner import evaluate

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip()) if args.modes else None
    try:
        ratios = tuple(float(r) for r in args.ratios.split(",") if r.strip())
    except ValueError:
        raise ValueError(f"--ratios must be comma-separated numbers, got {args.ratios!r}") from None
    cfg = EvalConfig(
        args.dataset, args.out, args.model, args.device, modes, ratios, args.limit, args.seed, args.cache_dir,
        args.context_tokens, plots=not args.no_plots, engine=args.engine,
    )  # fmt: skip
    created = _prepare_out(args.out)
    bar = Progress()
    try:
        result = evaluate(cfg, bar)
    except BaseException as e:  # nothing was written: leave no empty OUT behind either
        bar.close()
        _remove_empty(created)
        if isinstance(e, KeyboardInterrupt):
            where = f"after {bar.done} of {bar.total} requests" if bar.total else "before the first request"
            print(f"kvblend: eval interrupted {where}: no results written", file=sys.stderr)
            return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
        raise
    bar.close()
    c = result["config"]
    print(f"kvblend eval: {c['kind']}, n = {c['n_items']}, model {c['model']}, {c['machine']}")
    print(table(result["modes"]))
    for note in result["notes"][:-1]:
        print(f"note: {note}")
    print(f"wrote {', '.join(result['files'])}")
    return 0


def _prepare_out(out: Path) -> list[Path]:
    """Create `out` and check that a file can be made in it, before any work: a run that cannot write its
    results is not started (a read-only or pseudo-filesystem directory passes `mkdir` alone). Returns the
    directories this made, deepest first, for `_remove_empty` when the run fails."""
    missing = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=STAGING_PREFIX):
            pass
    except OSError as e:
        _remove_empty(missing)
        raise ValueError(f"cannot write results to {out}: {e.strerror}") from None
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    """Remove `dirs` (deepest first) while they are empty; one that is not is left with all above it."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


class Progress:
    """Progress on stderr: a redrawn bar on a terminal, a plain line per 10% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last, self._shown, self._t0 = 0.0, -1, time.monotonic()
        self._drawn = False
        self.done, self.total = 0, 0  # the last call's counts (the message of an interrupted run)

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        elapsed = time.monotonic() - self._t0
        if self.tty:
            now = time.monotonic()
            if now - self._last < 0.1 and done < total:
                return
            self._last, self._drawn = now, True
            fill = int(30 * done / max(total, 1))
            sys.stderr.write(f"\reval [{'#' * fill}{'.' * (30 - fill)}] {done}/{total} requests, {elapsed:.0f} s ")
        else:
            tenth = 10 * done // max(total, 1)
            if tenth == self._shown:
                return
            self._shown = tenth
            sys.stderr.write(f"eval: {done}/{total} requests, {elapsed:.0f} s\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            self._drawn = False
