"""The `kvblend` command line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from kvblend import cli_capsule, cli_eval, cli_ledger
from kvblend.lines import line_bounds, line_starts

log = logging.getLogger(__name__)

# = kvblend.engine.ENGINES, spelled out so that the CLI starts without importing torch (tests check they agree).
ENGINES = ("torch", "vllm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvblend", description="Repository-aware code completion with blended KV caches.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a continuation of a raw prompt (no template)")
    _model_args(g)
    g.add_argument("--prompt-file", required=True, type=Path, help="UTF-8 text file holding the prompt")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("engine", help="prefill / decode speed against the transformers forward")
    _model_args(be)
    be.add_argument("--prompt-tokens", type=int, default=2048)
    be.add_argument("--decode-tokens", type=int, default=32)
    be.add_argument("--json", action="store_true", help="print one JSON object")

    bb = bsub.add_parser("blend", help="TTFT and fidelity of blending vs full prefill, naive reuse, prefix reuse")
    _model_args(bb)
    bb.add_argument("--chunks", type=int, default=8)
    bb.add_argument("--chunk-tokens", type=int, default=512)
    bb.add_argument("--prompt-tokens", type=int, default=256)
    bb.add_argument("--decode-tokens", type=int, default=32)
    bb.add_argument("--shared-prefix", action="store_true", help="precompute chunks behind the repo header")
    bb.add_argument("--chunk-start-tokens", type=int, default=None, help="always recompute each chunk's first N")
    bb.add_argument("--repeats", type=int, default=3)
    bb.add_argument("--samples", type=int, default=3, help="token sequences averaged over")
    bb.add_argument("--json", action="store_true", help="print one JSON object")

    bi = bsub.add_parser("index", help="indexing tokens/s vs raw prefill; disk-tier load GB/s vs a plain read")
    _model_args(bi)
    bi.add_argument("path", type=Path, help="the repository to index")
    bi.add_argument("--repeats", type=int, default=9)
    bi.add_argument("--workers", type=int, default=0, help="precompute workers (0: one per torch thread on a CPU)")
    bi.add_argument("--json", action="store_true", help="print one JSON object")

    bl = bsub.add_parser("lsp", help="replay a typing session against kvblend serve: time to suggestion")
    _model_args(bl)
    bl.add_argument("--keystrokes", type=int, default=200)
    bl.add_argument("--configs", default="kvblend,full", help="comma-separated: kvblend (defaults), full")
    bl.add_argument("--json", action="store_true", help="print one JSON object")

    bv = bsub.add_parser("vllm", help="TTFT in vLLM: its full prefill vs our blended KV through the connector")
    _model_args(bv)
    bv.add_argument("--contexts", default="4096", help="comma-separated total prompt tokens, e.g. 4096,16384")
    bv.add_argument("--chunk-tokens", type=int, default=512)
    bv.add_argument("--prompt-tokens", type=int, default=256)
    bv.add_argument("--ratio", type=float, default=0.15, help="blend recompute ratio")
    bv.add_argument("--repeats", type=int, default=3)
    bv.add_argument("--tokens", choices=("corpus", "random"), default="corpus", help="random: random-weight models")
    bv.add_argument("--dtype", default="float32", help="float32 (CPU) or bfloat16 (GPU); vLLM and the blend alike")
    bv.add_argument("--no-torch", action="store_true", help="skip our own engine's reference timings")
    bv.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    ix = sub.add_parser("index", help="index a workspace and precompute its chunk KV")
    _model_args(ix)
    ix.add_argument("path", type=Path, help="the workspace root")
    ix.add_argument("--cache-dir", type=Path, default=None, help="disk tier (default: PATH/.kvblend/cache)")
    ix.add_argument("--redis-url", default=None, help="also use a shared redis tier, e.g. redis://host:6379/0")
    ix.add_argument("--max-chunk-tokens", type=int, default=512)
    ix.add_argument("--workers", type=int, default=0, help="precompute workers (0: one per torch thread on a CPU)")
    ix.add_argument("--json", action="store_true", help="print one JSON object")

    sv = sub.add_parser("serve", help="run the language server over stdio (--tcp PORT for debugging)")
    _model_args(sv)
    sv.add_argument("--tcp", type=int, default=None, metavar="PORT", help="listen on 127.0.0.1:PORT instead")
    sv.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default; clients pass it)")
    sv.add_argument("--redis-url", default=None, help="also use a shared redis tier, e.g. redis://host:6379/0")
    sv.add_argument("--cache-dir", type=Path, default=None, help="disk tier (default: WORKSPACE/.kvblend/cache)")
    sv.add_argument("--no-index", action="store_true", help="do not index the workspace (local prompt only)")
    sv.add_argument("--log-file", type=Path, default=None, help="log here (stdio carries the protocol)")
    sv.add_argument("--engine", choices=ENGINES, default="torch",
                    help="torch: our engine; vllm: vLLM serves, fed blended KV (needs vllm, see README)")  # fmt: skip

    co = sub.add_parser("complete", help="complete at a cursor in a file; prints only the completion")
    _model_args(co)
    co.add_argument("--file", required=True, type=Path, help="the file being edited")
    co.add_argument("--line", required=True, type=int, help="1-based line of the cursor")
    co.add_argument("--col", required=True, type=int, help="1-based column of the cursor (characters)")
    co.add_argument("--workspace", type=Path, default=None, help="repository root (default: the file's git root)")
    co.add_argument("--no-index", action="store_true", help="no repository context (local prompt only)")
    co.add_argument("--settings", default=None, help='JSON object of settings, e.g. \'{"mode": "full"}\'')
    co.add_argument("--json", action="store_true", help="print the whole result as JSON instead of the text")
    cli_ledger.add_parser(sub, bsub)
    cli_capsule.add_parsers(sub, bsub)
    cli_eval.add_parser(sub)

    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="HF-format checkpoint directory (default: bundled model)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def main(argv: list[str] | None = None) -> int:
    # The tokenizer's own thread pool only competes with the precompute workers, which already use every core:
    # indexing this repository's indexer/ spent 0.11 s more CPU per run with it (4.31 vs 4.20 s, 10 alternating
    # runs). Read on every call by `tokenizers`; a value the user set wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args, rest = build_parser().parse_known_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if rest:
        print(f"kvblend: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "ledger" or getattr(args, "bench", None) == "ledger":
        return cli_ledger.run(args)
    try:
        if args.command == "complete":
            return _complete(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "index":
            return _index(args)
        if args.command == "eval":
            return cli_eval.run(args)
        if args.command == "capsule" or (args.command == "bench" and args.bench == "capsule"):
            return cli_capsule.run(args)
        if args.command == "bench":
            if args.bench == "index":
                return _bench_index(args)
            if args.bench == "lsp":
                return _bench_lsp(args)
            if args.bench == "vllm":
                return _bench_vllm(args)
            return _bench_blend(args) if args.bench == "blend" else _bench_engine(args)
    except ValueError as e:  # boundary errors (config, checkpoint, input) carry a message for the user
        print(f"kvblend: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the machine's side (an unusable cache directory, a full disk): one line, no traceback
        logging.getLogger("kvblend").debug("%s", e, exc_info=True)
        where = f": {e.filename}" if e.filename else ""
        print(f"kvblend: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    return 2


def _generate(args: argparse.Namespace) -> int:
    from blend.generate import generate
    from blend.loader import load_model
    from blend.sampling import Sampler, SamplingParams
    from kvblend.stops import whole_chars

    params = SamplingParams(args.temperature, args.top_p, args.seed)  # checked before the model loads
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    try:
        prompt = args.prompt_file.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read prompt file {args.prompt_file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"prompt file {args.prompt_file} is not UTF-8 text") from None
    lm = load_model(args.model, device=args.device)
    ids = lm.tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"prompt file {args.prompt_file} is empty")
    window = lm.config.max_position_embeddings
    if len(ids) + args.max_tokens - 1 > window:  # the last generated token is never fed back: no position
        raise ValueError(
            f"prompt of {len(ids)} tokens + --max-tokens {args.max_tokens} exceeds the model's context window "
            f"of {window} tokens (max_position_embeddings)"
        )
    sampler = Sampler(params)
    out = generate(lm.model, ids, args.max_tokens, sampler, lm.tokenizer.eos_ids)
    sys.stdout.write(whole_chars(lm.tokenizer.decode(out.tokens)))  # not a U+FFFD for a cut-off character
    sys.stdout.flush()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from lsp_server.backend import ServerOptions
    from lsp_server.server import build_server
    from lsp_server.transport import ListenError

    if args.tcp is not None and not 0 < args.tcp < 65536:
        print(f"kvblend: --tcp {args.tcp}: a port is 1 to 65535", file=sys.stderr)
        return 2
    if args.log_file is not None:  # stdout is the protocol channel: logs go to stderr or a file
        logging.getLogger().handlers[:] = [logging.FileHandler(args.log_file)]
    opts = ServerOptions(args.model, args.device, args.redis_url, args.cache_dir, index=not args.no_index,
                         engine=args.engine)  # fmt: skip
    server = build_server(opts)
    if args.tcp is None:
        server.start_io()  # SystemExit(1) when the client went without `shutdown`, as start_tcp
        return 0
    try:
        server.start_tcp("127.0.0.1", args.tcp)
    except ListenError as e:  # the port is taken or not ours: one line
        print(f"kvblend: {e}", file=sys.stderr)
        return 1
    return 0


def _complete(args: argparse.Namespace) -> int:
    from blend.loader import load_model
    from kvblend.completer import Completer
    from kvblend.completion import CompletionRequest
    from kvblend.settings import Settings

    text = _read_text(args.file)
    cursor = _cursor(text, args.line, args.col)
    settings = Settings()
    if args.settings:
        try:
            options = json.loads(args.settings)
        except json.JSONDecodeError as e:
            raise ValueError(f"--settings is not JSON: {e}") from None
        settings, warnings = Settings.from_options(options)
        if warnings:
            raise ValueError("; ".join(warnings))
    root = args.workspace or _git_root(args.file)
    use_index = not args.no_index and settings.mode != "none"
    if root is None:  # no repository to bound it: indexing the file's directory could walk a home directory
        if use_index:
            print(f"kvblend: {args.file} is in no git repository: completing from the file alone (--workspace DIR "
                  "gives it a directory's files as context)", file=sys.stderr)  # fmt: skip
        use_index, root = False, args.file.resolve().parent
    lm = load_model(args.model, device=args.device)
    indexer = None
    if use_index:
        from indexer import Indexer, IndexerConfig

        if not root.is_dir():
            raise ValueError(f"not a directory: {root}")
        indexer = Indexer(IndexerConfig(root), lm)
        indexer.update([args.file.absolute()], recent=True)  # relative to the shell, not the root; links kept
        indexer.index()
    try:
        completer = Completer(lm, settings, indexer)
        result = completer.complete(CompletionRequest(relative_path(root, args.file), text, cursor))
    finally:
        if indexer is not None:
            indexer.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    return 0


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if b"\x00" in data[:8192]:
        raise ValueError(f"{path} is a binary file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def _cursor(text: str, line: int, col: int) -> int:
    r"""Character offset of a 1-based line and column (in characters). Lines end at \r\n, \r or \n, as the
    language server counts them, so that a CRLF file's line ends where the user sees it; column len(line)+1
    is the line's end (before its line end)."""
    starts = line_starts(text)
    if not 1 <= line <= len(starts):
        raise ValueError(f"line {line} outside the file (1..{len(starts)})")
    start = starts[line - 1]
    width = line_bounds(text, start)[1] - start
    if not 1 <= col <= width + 1:
        raise ValueError(f"column {col} outside line {line} (1..{width + 1})")
    return start + col - 1


def relative_path(root: Path, path: Path) -> str:
    """Workspace-relative posix path of `path`, or its bare name when it lies outside `root`."""
    p = path.resolve()
    try:
        return p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.name


def _git_root(path: Path) -> Path | None:
    for parent in path.resolve().parents:
        if (parent / ".git").exists():
            return parent
    return None


def _bench_engine(args: argparse.Namespace) -> int:
    from kvblend.bench import bench_engine

    return _print(bench_engine(args.model, args.prompt_tokens, args.decode_tokens, args.device), args.json)


def _bench_blend(args: argparse.Namespace) -> int:
    from blend.cacheblend import BlendConfig
    from kvblend.bench_blend import bench_blend

    starts = BlendConfig().chunk_start_tokens if args.chunk_start_tokens is None else args.chunk_start_tokens
    result = bench_blend(
        args.model, args.chunks, args.chunk_tokens, args.prompt_tokens, args.decode_tokens,
        shared_prefix=args.shared_prefix, chunk_start_tokens=starts, repeats=args.repeats, samples=args.samples,
        device=args.device,
    )  # fmt: skip
    return _print(result, args.json)


def _index(args: argparse.Namespace) -> int:
    from blend.loader import load_model
    from indexer import Indexer, IndexerConfig, StoreConfig

    if not args.path.is_dir():
        raise ValueError(f"not a directory: {args.path}")
    tiers = ("memory", "disk", "redis") if args.redis_url else ("memory", "disk")
    store = StoreConfig(tiers=tiers, redis_url=args.redis_url)
    cfg = IndexerConfig(
        args.path, cache_dir=args.cache_dir, max_chunk_tokens=args.max_chunk_tokens, workers=args.workers, store=store
    )
    lm = load_model(args.model, device=args.device)
    bar = _ProgressBar() if sys.stderr.isatty() else None
    idx = Indexer(cfg, lm, progress=bar)
    disk = idx.store.tier("disk")
    try:
        if disk.write_error is not None:  # nothing computed would be kept: say so before the work, not after
            raise ValueError(f"cannot write the disk cache {disk.dir}: {disk.write_error} (see --cache-dir)")
        stats = idx.index()
    finally:
        idx.close()
        if bar is not None:
            bar.close()
    out = stats.to_dict()
    keys = ("files", "chunks", "tokens", "bytes", "seconds", "tokens_per_s", "skipped", "computed", "reused",
            "engine_seconds", "workers")  # fmt: skip
    rc = _print({k: out[k] for k in keys}, args.json)
    if disk.failed_writes:  # a full disk mid-run: the index ran, but what it computed is not all kept
        why = f" ({disk.write_error})" if disk.write_error else ""
        print(f"kvblend: error: {disk.failed_writes} chunks could not be written to the disk cache {disk.dir}{why}; "
              "the next run computes them again", file=sys.stderr)  # fmt: skip
        return 1
    return rc


class _ProgressBar:
    """A one-line progress bar on stderr for `kvblend index` (redrawn at most every 0.1 s)."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, p) -> None:
        import time

        now = time.monotonic()
        if now - self._last < 0.1 and p.done < p.total:
            return
        self._last = now
        width = 30
        fill = int(width * p.fraction)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {p.done}/{p.total} chunks, {p.tokens} tokens ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _bench_index(args: argparse.Namespace) -> int:
    from kvblend.bench_index import bench_index

    if not args.path.is_dir():
        raise ValueError(f"not a directory: {args.path}")
    return _print(bench_index(args.model, args.path, args.device, args.repeats, args.workers), args.json)


def _bench_lsp(args: argparse.Namespace) -> int:
    from kvblend.bench_lsp import CONFIGS, bench_lsp

    configs = tuple(c for c in args.configs.split(",") if c)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown} (expected some of {list(CONFIGS)})")
    return _print(bench_lsp(args.model, args.keystrokes, configs), args.json)


def _bench_vllm(args: argparse.Namespace) -> int:
    import torch

    from blend.loader import load_model
    from kvblend.bench_vllm import VllmBenchConfig, bench_vllm, format_table
    from kvblend.engine import make_engine

    try:
        contexts = tuple(int(c) for c in args.contexts.split(",") if c)
    except ValueError:
        raise ValueError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from None
    cfg = VllmBenchConfig(contexts, args.chunk_tokens, args.prompt_tokens, args.ratio, args.repeats,
                          tokens=args.tokens, with_torch=not args.no_torch)  # fmt: skip
    if importlib.util.find_spec("vllm") is None:  # before the model loads, not after
        raise ValueError("bench vllm needs the vllm package (see README, 'vLLM')")
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {args.dtype!r}")
    lm = load_model(args.model, device=args.device, dtype=dtype)
    with make_engine("vllm", lm, dtype=args.dtype, max_model_len=max(contexts)) as engine:
        result = bench_vllm(engine, lm, cfg)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
