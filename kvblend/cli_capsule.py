"""`kvblend capsule ...` (inspect a disk capsule store) and `kvblend bench capsule`."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

# kvblend.bench_capsule.CONTEXTS, spelled out so that building the parser does not import torch.
_CONTEXTS = "2048,4096,8192,16384"


def add_parsers(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction) -> None:
    """Register `capsule` under the top-level subcommands and `capsule` under `bench`."""
    c = sub.add_parser("capsule", help="list, show, drop and verify saved session capsules in a directory")
    csub = c.add_subparsers(dest="capsule_command", required=True)
    ls = csub.add_parser("list", help="one line (or JSON object) per capsule")
    ls.add_argument("--uri", default=None, help="only this document's capsules")
    show = csub.add_parser("show", help="the metadata of one capsule")
    show.add_argument("id")
    drop = csub.add_parser("drop", help="delete one capsule")
    drop.add_argument("id")
    verify = csub.add_parser("verify", help="read and checksum every capsule file; exit 1 if any is damaged")
    verify.add_argument("--delete", action="store_true", help="delete the damaged files")
    for p in (ls, show, drop, verify):
        p.add_argument("--dir", type=Path, required=True, help="the capsule store's disk directory")
        p.add_argument("--json", action="store_true", help="print JSON")

    bc = bench_sub.add_parser("capsule", help="TTFT of restoring a capsule + a short delta vs a cold prefill")
    bc.add_argument("--model", type=Path, default=None, help="HF-format checkpoint directory (default: bundled model)")
    bc.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bc.add_argument("--contexts", default=_CONTEXTS, help="comma-separated context lengths")
    bc.add_argument("--delta-tokens", type=int, default=16)
    bc.add_argument("--repeats", type=int, default=3)
    bc.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Dispatch `kvblend capsule ...` and `kvblend bench capsule`; ValueError reaches main's handler."""
    if args.command == "bench":
        return _bench(args)
    if not args.dir.is_dir():
        raise ValueError(f"not a directory: {args.dir}")
    return {"list": _list, "show": _show, "drop": _drop, "verify": _verify}[args.capsule_command](args)


def _infos(args: argparse.Namespace, uri: str | None = None) -> list[dict]:
    """The capsules in --dir (of `uri`), oldest first; one line on stderr per damaged file. Inspecting never
    deletes: not even a damaged file (`verify --delete` does), unlike a server's store starting on the directory."""
    from capsule.store import list_dir

    infos, damaged = list_dir(args.dir, uri)
    for p, err in damaged:
        print(f"kvblend: skipped damaged capsule file {p.name}: {err}", file=sys.stderr)
    return infos


def _when(created: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(created).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a time past the platform's range: shown as it is
        return str(created)


def _list(args: argparse.Namespace) -> int:
    infos = _infos(args, args.uri)
    if args.json:
        print(json.dumps(infos))
        return 0
    for i in infos:
        when = _when(i["created"])
        print(f"{i['id']}  {i['n_tokens']:>6} tok  {i['disk_bytes']:>11} B  {when}  v{i['doc_version']}  {i['uri']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    info = next((i for i in _infos(args) if i["id"] == args.id), None)
    if info is None:
        print(f"kvblend: no capsule {args.id} in {args.dir}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>12}: {value}")
    return 0


def _drop(args: argparse.Namespace) -> int:
    from capsule.serde import SUFFIX

    if not any(i["id"] == args.id for i in _infos(args)):
        print(f"kvblend: no capsule {args.id} in {args.dir}", file=sys.stderr)
        return 1
    (args.dir / f"{args.id}{SUFFIX}").unlink(missing_ok=True)  # the listed capsules are named after their ids
    print(json.dumps({"dropped": args.id}) if args.json else f"dropped {args.id}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from capsule.store import verify_dir

    results = verify_dir(args.dir)
    bad = {p: err for p, err in results if err is not None}
    kept = {}  # damaged files --delete could not remove (a directory named *.capsule, no permission)
    if args.delete:
        for p in bad:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                kept[p] = e.strerror or str(e)
    if args.json:
        out = {"files": len(results), "damaged": {p.name: err for p, err in bad.items()}, "deleted": args.delete}
        if kept:
            out["not_deleted"] = {p.name: why for p, why in kept.items()}
        print(json.dumps(out))
    else:
        for p, err in results:
            print(f"{'ok' if err is None else 'DAMAGED'}  {p.name}{'' if err is None else '  ' + err}")
        for p, why in kept.items():
            print(f"kvblend: cannot delete {p.name}: {why}", file=sys.stderr)
    return 1 if bad else 0


def _bench(args: argparse.Namespace) -> int:
    from kvblend.bench_capsule import bench_capsule

    try:
        contexts = tuple(int(x) for x in args.contexts.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from None
    if not contexts or min(contexts) < 1 or args.delta_tokens < 1:
        raise ValueError(f"need positive context lengths and delta tokens, got {args.contexts!r}, {args.delta_tokens}")
    result = bench_capsule(args.model, contexts, args.delta_tokens, args.repeats, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0
