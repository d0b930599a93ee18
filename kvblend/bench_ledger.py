"""`kvblend bench ledger`: gate decisions per second on a generated repository (no model, no torch).

Two modes, each over `decisions` single-file edits spread across the repository, every decision appended to
the audit log: `check` (a FileChange holding whole texts, the LSP path) and `check_patch` (a unified diff parsed
against the files on disk, the CLI path). The policy holds a typical mix of rules.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from ledger import FileChange, Gate, Session, verify_audit

log = logging.getLogger(__name__)

POLICY = """
[defaults]
decision = "allow"

[limits]
max_lines_per_edit = 400
max_lines_per_session = 1000000

[[rule]]
name = "vendor-read-only"
decision = "deny"
paths = ["vendor/"]
reason = "vendored code is updated by the vendoring script"

[[rule]]
name = "no-pickle"
decision = "deny"
paths = ["src/**/*.py"]
forbid_imports = ["pickle", "marshal"]
forbid_apis = ["eval", "os.system"]

[[rule]]
name = "no-passwords"
decision = "deny"
content_presets = ["passwords"]

[[rule]]
name = "deletes-need-approval"
decision = "ask"
ops = ["delete", "rename"]
"""


def _make_repo(root: Path, files: int, lines: int) -> list[str]:
    paths = []
    for i in range(files):
        rel = f"src/pkg{i // 50:02d}/mod{i:04d}.py"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        body = [f"def f{i}_{k}(x):\n    return x + {k}\n" for k in range(lines // 2)]
        p.write_text("".join(body))
        paths.append(rel)
    (root / ".kvblend").mkdir()
    (root / ".kvblend" / "policy.toml").write_text(POLICY)
    return paths


def _edit(text: str, k: int) -> str:
    lines = text.split("\n")
    j = 1 + 2 * (k % (len(lines) // 2))
    lines[j] = f"    return x * {k}"
    return "\n".join(lines)


def _diff(rel: str, old: str, k: int) -> str:
    lines = old.split("\n")[:-1]  # the file ends with a newline
    j = 1 + 2 * (k % (len(lines) // 2))
    ctx_before = lines[max(j - 3, 0) : j]
    ctx_after = lines[j + 1 : j + 4]
    start = j - len(ctx_before) + 1
    n = len(ctx_before) + 1 + len(ctx_after)
    body = [f" {s}" for s in ctx_before] + [f"-{lines[j]}", f"+    return x * {k}"] + [f" {s}" for s in ctx_after]
    return (
        f"diff --git a/{rel} b/{rel}\n--- a/{rel}\n+++ b/{rel}\n@@ -{start},{n} +{start},{n} @@\n"
        + "\n".join(body)
        + "\n"
    )


def bench_ledger(files: int = 1000, decisions: int = 2000, lines: int = 40) -> dict:
    """Decisions per second of `Gate.check` and `Gate.check_patch` on a `files`-file repository."""
    with tempfile.TemporaryDirectory(prefix="kvblend-bench-ledger-") as d:
        root = Path(d)
        t0 = time.perf_counter()
        paths = _make_repo(root, files, lines)
        setup_s = time.perf_counter() - t0
        gate = Gate(root, session=Session())
        assert gate.policy is not None, gate.policy_error
        texts = {p: (root / p).read_text() for p in paths}
        changes = [
            FileChange("edit", p, None, texts[p], _edit(texts[p], k), 2)
            for k, p in ((k, paths[k % len(paths)]) for k in range(decisions))
        ]
        patches = [_diff(p, texts[p], k) for k, p in ((k, paths[k % len(paths)]) for k in range(decisions))]

        t0 = time.perf_counter()
        allowed = sum(gate.check([c]).allowed for c in changes)
        check_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        allowed_patch = sum(gate.check_patch(p)[0].allowed for p in patches)
        patch_s = time.perf_counter() - t0
        ok, _ = verify_audit(gate.audit.path)
        audit_bytes = gate.audit.path.stat().st_size
    if allowed != decisions or allowed_patch != decisions:
        raise RuntimeError(f"benchmark edits were not all allowed ({allowed}, {allowed_patch} of {decisions})")
    return {
        "files": files,
        "decisions": decisions,
        "check_per_s": round(decisions / check_s, 1),
        "check_patch_per_s": round(decisions / patch_s, 1),
        "check_us": round(1e6 * check_s / decisions, 1),
        "check_patch_us": round(1e6 * patch_s / decisions, 1),
        "setup_s": round(setup_s, 3),
        "audit_ok": ok,
        "audit_bytes": audit_bytes,
    }
