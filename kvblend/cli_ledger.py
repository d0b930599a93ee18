"""`kvblend ledger ...` and `kvblend bench ledger`: the policy gate from the command line.

Exit codes of `check` / `apply`: 0 allow, 1 deny, 3 ask, 2 usage or policy error (the decision is still
logged: a gate with a broken policy denies). `verify-audit`: 0 intact, 1 tampered or damaged, 2 unreadable.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EXIT = {"allow": 0, "deny": 1, "ask": 3}
USAGE_ERROR = 2
_SKIP_DIRS = {".git", ".kvblend", ".venv", "venv", "node_modules", "__pycache__", "build", "dist"}


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (a block of 0 or fewer characters printed nothing and exited 0)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def add_parser(sub: argparse._SubParsersAction, bench_sub: argparse._SubParsersAction | None = None) -> None:
    """Register `ledger` under the top-level subcommands and `ledger` under `bench` (when given)."""
    lp = sub.add_parser("ledger", help="check agent edits against the repository policy; audit log")
    lsub = lp.add_subparsers(dest="ledger", required=True)
    for name, text in (
        ("check", "decide on a unified diff without applying it (exit 0 allow, 1 deny, 3 ask, 2 error)"),
        ("apply", "decide on a unified diff and apply it when allowed (same exit codes)"),
    ):
        p = lsub.add_parser(name, help=text)
        _repo_args(p)
        p.add_argument("patch", help="unified diff file, or - for stdin")
    r = lsub.add_parser("render", help="print the ledger block that goes into agent prompts")
    _repo_args(r)
    r.add_argument("--max-chars", type=_positive, default=None, help="size of the block (default 2000)")
    v = lsub.add_parser("verify-audit", help="verify the hash chain of an audit log (exit 0 intact, 1 tampered)")
    v.add_argument("file", type=Path)
    v.add_argument("--json", action="store_true", help="print one JSON object")
    if bench_sub is not None:
        b = bench_sub.add_parser("ledger", help="gate decisions per second on a generated repository")
        b.add_argument("--files", type=int, default=1000, help="files in the generated repository")
        b.add_argument("--decisions", type=int, default=2000, help="decisions timed per mode")
        b.add_argument("--json", action="store_true", help="print one JSON object")


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, type=Path, help="the workspace root")
    p.add_argument("--policy", type=Path, default=None, help="policy file (default: REPO/.kvblend/policy.toml)")
    p.add_argument("--audit", type=Path, default=None, help="audit log (default: REPO/.kvblend/audit.jsonl)")
    p.add_argument("--session", default=None, help="session id; its earlier allowed edits are read from the audit log")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Dispatch `kvblend ledger <cmd>` and `kvblend bench ledger`; returns the exit code."""
    if args.command == "bench":
        from kvblend.bench_ledger import bench_ledger

        result = bench_ledger(files=args.files, decisions=args.decisions)
        print(json.dumps(result) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in result.items()))
        return 0
    if args.ledger == "verify-audit":
        return _verify(args)
    if not args.repo.is_dir():
        print(f"kvblend ledger: error: not a directory: {args.repo}", file=sys.stderr)
        return USAGE_ERROR
    if args.ledger == "render":
        return _render(args)
    return _check(args, apply=args.ledger == "apply")


def _gate(args: argparse.Namespace):
    from ledger import Gate, LedgerConfig, Session

    cfg = LedgerConfig()
    audit = args.audit if args.audit is not None else args.repo / cfg.audit_file
    session = Session.from_audit(audit, args.session) if args.session else None
    return Gate(args.repo, audit_path=audit, session=session, policy_path=args.policy, config=cfg)


def _read_patch(arg: str) -> bytes | None:
    if arg == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(arg).read_bytes()
    except OSError as e:
        print(f"kvblend ledger: error: cannot read patch {arg}: {e.strerror}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace, apply: bool) -> int:
    patch = _read_patch(args.patch)
    if patch is None:
        return USAGE_ERROR
    gate = _gate(args)
    try:
        decision = gate.apply_patch(patch) if apply else gate.check_patch(patch)[0]
    except ValueError as e:  # allowed, but the workspace changed under the patch (nothing was written)
        print(f"kvblend ledger: error: {e}", file=sys.stderr)
        return EXIT["deny"]
    if args.json:
        out = decision.to_dict() | {"applied": apply and decision.allowed, "session": gate.session.id}
        print(json.dumps(out))
    else:
        print(decision.format())
        if apply and decision.allowed:
            print("applied")
    if gate.policy_error is not None:
        print(f"kvblend ledger: policy error: {gate.policy_error}", file=sys.stderr)
        return USAGE_ERROR
    return EXIT[decision.decision]


def _render(args: argparse.Namespace) -> int:
    from ledger import Ledger, LedgerConfig, PolicyError, Session, load_policy

    cfg = LedgerConfig()
    try:
        policy = load_policy(args.repo, args.policy, cfg)
    except PolicyError as e:
        print(f"kvblend ledger: policy error: {e}", file=sys.stderr)
        return USAGE_ERROR
    audit = args.audit if args.audit is not None else args.repo / cfg.audit_file
    session = Session.from_audit(audit, args.session) if args.session else None
    led = Ledger(policy, session, identifiers=scan_identifiers(args.repo), config=cfg)
    print(json.dumps(led.to_dict()) if args.json else led.render(args.max_chars))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ledger import verify_audit
    from ledger.audit import read_audit

    try:
        ok, bad = verify_audit(args.file)
    except OSError as e:
        print(f"kvblend ledger: error: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return USAGE_ERROR
    records = len(read_audit(args.file)) if ok else None
    if args.json:
        print(json.dumps({"ok": ok, "first_bad_line": bad, "records": records}))
    elif ok:
        print(f"ok: {records} records, chain intact")
    else:
        print(f"tampered or damaged: line {bad} breaks the hash chain")
    return 0 if ok else 1


def scan_identifiers(repo: Path, max_files: int = 2000, max_bytes: int = 1_000_000) -> list[str]:
    """Top-level functions, classes and assigned names of the repository's Python files (sorted, unique)."""
    names: set[str] = set()
    seen = 0
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.endswith(".py") or seen >= max_files:
                continue
            path = Path(dirpath) / fn
            seen += 1
            try:
                if path.stat().st_size > max_bytes:
                    continue
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                continue
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return sorted(names)
