"""`kvblend ledger ...` and `kvblend bench ledger` contracts (real subprocesses)."""

import json
import subprocess
import sys

from tests.ledger_fixtures import APP, TEST_APP, make_repo, snapshot, udiff

POLICY = """
[[rule]]
name = "docs-need-review"
decision = "ask"
paths = ["docs/**"]
reason = "docs are reviewed by the docs team"
"""


def _run(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "kvblend", "ledger", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_check_exit_codes(tmp_path):
    root = make_repo(tmp_path / "ws", POLICY)
    (tmp_path / "allow.diff").write_text(udiff("src/app.py", APP, APP.replace("a + b", "b + a")))
    (tmp_path / "deny.diff").write_text(udiff(".git/config", "[core]\n\tbare = false\n", "x\n"))
    (tmp_path / "ask.diff").write_text(udiff("docs/guide.md", "# Guide\n\nRead me.\n", "# Guide\n"))
    before = snapshot(root)

    r = _run("check", "--repo", str(root), str(tmp_path / "allow.diff"))
    assert r.returncode == 0 and r.stdout.startswith("allow\n"), r.stderr
    r = _run("check", "--repo", str(root), str(tmp_path / "deny.diff"))
    assert r.returncode == 1 and r.stdout.startswith("deny\n") and ".git/ is protected" in r.stdout
    r = _run("check", "--repo", str(root), "--json", "-", stdin=(tmp_path / "ask.diff").read_text())
    out = json.loads(r.stdout)
    assert r.returncode == 3 and out["decision"] == "ask" and out["applied"] is False
    assert out["reasons"][0]["rule"] == "docs-need-review" and "docs team" in out["reasons"][0]["message"]
    r = _run("check", "--repo", str(root), str(tmp_path / "missing.diff"))
    assert r.returncode == 2 and "cannot read patch" in r.stderr
    r = _run("check", "--repo", str(tmp_path / "nope"), str(tmp_path / "allow.diff"))
    assert r.returncode == 2 and "not a directory" in r.stderr
    assert _run("check", "--repo", str(root)).returncode == 2  # no PATCH: argparse usage error
    assert snapshot(root) == before  # check applies nothing

    (tmp_path / "bad.toml").write_text('[[rule]]\nname = "r"\ndecision = "deny"\nops = ["write"]\n')
    r = _run("check", "--repo", str(root), "--policy", str(tmp_path / "bad.toml"), str(tmp_path / "allow.diff"))
    assert r.returncode == 2 and r.stdout.startswith("deny\n")
    assert "rule[0] 'r' field 'ops'" in r.stderr
    records = [json.loads(line) for line in (root / ".kvblend" / "audit.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in records] == ["allow", "deny", "ask", "deny"]  # the policy-error deny too


def test_apply_and_audit_verification(tmp_path):
    root = make_repo(tmp_path / "ws")
    audit = tmp_path / "audit.jsonl"
    (tmp_path / "ok.diff").write_text(udiff("src/app.py", APP, APP + "# end\n") + udiff("tests/new.py", None, "x\n"))
    (tmp_path / "no.diff").write_text(udiff("tests/test_app.py", TEST_APP, "") + udiff(".env", None, "A=1\n"))
    r = _run("apply", "--repo", str(root), "--audit", str(audit), "--session", "s9", str(tmp_path / "ok.diff"))
    assert r.returncode == 0 and r.stdout.endswith("applied\n"), r.stdout + r.stderr
    assert (root / "src" / "app.py").read_text() == APP + "# end\n" and (root / "tests" / "new.py").read_text() == "x\n"
    before = snapshot(root)
    r = _run("apply", "--repo", str(root), "--audit", str(audit), str(tmp_path / "no.diff"))
    assert r.returncode == 1 and snapshot(root) == before

    r = _run("verify-audit", str(audit), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "first_bad_line": None, "records": 3}
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text("".join([lines[0].replace('"allow"', '"deny"')] + lines[1:]))
    r = _run("verify-audit", str(audit))
    assert r.returncode == 1 and "line 1" in r.stdout
    assert _run("verify-audit", str(tmp_path / "missing.jsonl")).returncode == 2


def test_render(tmp_path):
    root = make_repo(tmp_path / "ws", POLICY)
    audit = tmp_path / "audit.jsonl"
    (tmp_path / "ok.diff").write_text(udiff("src/app.py", APP, APP + "\n\nclass Calculator:\n    pass\n"))
    r = _run("apply", "--repo", str(root), "--audit", str(audit), "--session", "s1", str(tmp_path / "ok.diff"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run("render", "--repo", str(root), "--audit", str(audit), "--session", "s1")
    assert r.returncode == 0, r.stderr
    assert "ask changes in docs/** [docs-need-review]: docs are reviewed by the docs team" in r.stdout
    assert "files touched (1): src/app.py (edit, 4 lines)" in r.stdout
    assert "identifiers (4): Calculator, add, sub, test_add" in r.stdout
    out = json.loads(_run("render", "--repo", str(root), "--json").stdout)
    assert out["identifiers"] == ["Calculator", "add", "sub", "test_add"] and out["files_touched"] == {}
    (root / ".kvblend" / "policy.toml").write_text("[[rule]]\n")
    r = _run("render", "--repo", str(root))
    assert r.returncode == 2 and "rule[0]" in r.stderr and "field 'name'" in r.stderr
    for bad in ("0", "-5", "x"):
        r = _run("render", "--repo", str(root), "--max-chars", bad)
        assert r.returncode == 2 and "--max-chars" in r.stderr and r.stdout == ""


def test_bench_ledger_json_contract():
    r = subprocess.run(
        [sys.executable, "-m", "kvblend", "bench", "ledger", "--files", "40", "--decisions", "40", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["files"] == 40 and out["decisions"] == 40 and out["audit_ok"] is True
    assert out["check_per_s"] > 0 and out["check_patch_per_s"] > 0 and out["audit_bytes"] > 40 * 200
