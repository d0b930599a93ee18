"""The gate: bypass attempts are denied and change nothing; allowed edits apply exactly; rules and precedence."""

import os
import shutil
import subprocess

import pytest

from ledger import FileChange, Gate, Ledger, Session, parse_unified_diff, verify_audit
from ledger.audit import read_audit
from tests.ledger_fixtures import APP, GITHUB_TOKEN, PRIVATE_KEY, TEST_APP, make_repo, snapshot, udiff

SESSION_POLICY = """
[limits]
max_lines_per_session = 6
"""

APP_EDIT = udiff("src/app.py", APP, APP.replace("a + b", "b + a"))

# name -> (patch, the rule that must deny it)
BYPASSES = {
    "dotdot traversal": (udiff("../outside.txt", "outside\n", "pwned\n"), "workspace"),
    "dotdot inside a path": (udiff("src/../../outside.txt", "outside\n", "pwned\n"), "workspace"),
    "dotdot to a protected file": (udiff("src/../.git/config", "[core]\n", "x\n"), "builtin.protected-path"),
    "absolute path": (
        "--- /etc/hostname\n+++ /etc/hostname\n@@ -1 +1 @@\n-a\n+b\n",
        "workspace",
    ),
    "absolute path in a git header": (udiff("/tmp/x.txt", None, "x\n"), "workspace"),
    "symlink to a protected file": (
        udiff("docs/config-link", "[core]\n\tbare = false\n", "[core]\n\tbare = true\n"),
        "builtin.protected-path",
    ),
    "symlinked directory to .git": (udiff("gitdir/hooks/pre-commit", None, "rm -rf /\n"), "builtin.protected-path"),
    "symlink leaving the workspace": (udiff("docs/out-link", "outside\n", "pwned\n"), "workspace"),
    "case variant .GIT": (udiff(".GIT/config", None, "x\n"), "builtin.protected-path"),
    "case variant .Git hooks": (udiff(".Git/hooks/post-checkout", None, "x\n"), "builtin.protected-path"),
    "case variant .ENV": (udiff(".ENV", None, "A=1\n"), "builtin.secret-file"),
    "case variant .KVBLEND policy": (udiff(".KVBLEND/policy.toml", None, "x = 1\n"), "builtin.protected-path"),
    "trailing dot .git.": (udiff(".git./config", None, "x\n"), "builtin.protected-path"),
    "nested .git": (udiff("vendor/lib/.git/config", None, "x\n"), "builtin.protected-path"),
    "the policy file": (udiff(".kvblend/policy.toml", None, "[defaults]\n"), "builtin.protected-path"),
    "the audit log": (udiff(".kvblend/audit.jsonl", None, "{}\n"), "builtin.protected-path"),
    "rename a protected file": (
        "diff --git a/.git/config b/config\nsimilarity index 100%\nrename from .git/config\nrename to config\n",
        "builtin.protected-path",
    ),
    "rename onto a protected path": (
        "diff --git a/src/app.py b/.git/hooks/pre-commit\nsimilarity index 100%\nrename from src/app.py\n"
        "rename to .git/hooks/pre-commit\n",
        "builtin.protected-path",
    ),
    "plain headers renaming onto .git": (
        "--- a/src/app.py\n+++ b/.git/config\n@@ -1 +1 @@\n-def add(a, b):\n+def add(b, a):\n",
        "builtin.protected-path",
    ),
    "delete a protected file": (udiff(".git/config", "[core]\n\tbare = false\n", None), "builtin.protected-path"),
    "delete a secret file": (udiff(".env", "TOKEN=abc\n", None), "builtin.secret-file"),
    "create a private key file by content": (udiff("src/key.txt", None, PRIVATE_KEY), "builtin.secret-content"),
    "create a .pem file": (udiff("certs/server.pem", None, "hello\n"), "builtin.secret-file"),
    "edit adding a token": (
        udiff("src/app.py", APP, APP + f'\nTOKEN = "{GITHUB_TOKEN}"\n'),
        "builtin.secret-content",
    ),
    "a protected file hidden behind an allowed one": (
        APP_EDIT + udiff(".git/hooks/pre-push", None, "curl evil\n"),
        "builtin.protected-path",
    ),
    "git binary patch": (
        "diff --git a/img.png b/img.png\nnew file mode 100644\nindex 0000000..1111111\nGIT binary patch\n"
        "literal 4\nLcmZ?wbaD6a00IC8\n\nliteral 0\nHcmV?d00001\n\n",
        "patch",
    ),
    "binary files differ": (
        "diff --git a/img.png b/img.png\nindex 1111111..2222222 100644\nBinary files a/img.png and b/img.png differ\n",
        "patch",
    ),
    "NUL bytes in a hunk": (udiff("src/blob.bin", None, "ab\0cd\n"), "patch"),
    "symlink creation": (
        "diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+.git/config\n"
        "\\ No newline at end of file\n",
        "patch",
    ),
    "hunk shorter than its header": (APP_EDIT.replace("@@ -1,5 +1,5 @@", "@@ -1,8 +1,8 @@"), "patch"),
    "hunk longer than its header": (APP_EDIT.replace("@@ -1,5 +1,5 @@", "@@ -1,2 +1,2 @@"), "patch"),
    "malformed hunk header": (APP_EDIT.replace("@@ -1,5 +1,5 @@", "@@ -1,6 +x @@"), "patch"),
    "garbage line in a hunk": (APP_EDIT.replace("\n \n", "\n?junk\n", 1), "patch"),
    "context that does not match": (APP_EDIT.replace(" def sub", " def mul"), "patch"),
    "hunk at the wrong line": (APP_EDIT.replace("@@ -1,5 +1,5 @@", "@@ -2,5 +2,5 @@"), "patch"),
    "hunk without a file header": ("@@ -1 +1 @@\n-a\n+b\n", "patch"),
    "overlapping hunks": (
        "--- a/src/app.py\n+++ b/src/app.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a + b\n+    return 0\n"
        "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a + b\n+    return 1\n",
        "patch",
    ),
    "create over an existing file": (udiff("src/app.py", None, "x\n"), "patch"),
    "the same file twice": (APP_EDIT + APP_EDIT, "patch"),
    "empty patch": ("just some words\n", "patch"),
}


@pytest.mark.parametrize("name", list(BYPASSES))
def test_bypass_attempt_is_denied_and_changes_nothing(tmp_path, name):
    patch, rule = BYPASSES[name]
    root = make_repo(tmp_path / "ws")
    before = snapshot(root)
    gate = Gate(root)
    decision = gate.apply_patch(patch)
    assert decision.decision == "deny", decision
    assert rule in [r.rule for r in decision.reasons], decision.reasons
    assert all(r.message for r in decision.reasons)
    assert snapshot(root) == before
    assert gate.session.lines_changed == 0 and gate.session.touched == {}
    records = read_audit(root / ".kvblend" / "audit.jsonl")
    assert [r["decision"] for r in records] == ["deny"]
    assert PRIVATE_KEY.splitlines()[1] not in str(records) and GITHUB_TOKEN not in str(records)


def test_several_edits_exceeding_the_session_limit(tmp_path):
    root = make_repo(tmp_path / "ws", SESSION_POLICY)
    gate = Gate(root)
    text = APP
    for k in range(3):  # 2 changed lines each: 6 lines reach the limit exactly
        new = text.replace(f"    return a - b{'  # x' * k}\n", f"    return a - b{'  # x' * (k + 1)}\n")
        d = gate.apply_patch(udiff("src/app.py", text, new))
        assert d.decision == "allow", d
        text = new
    assert gate.session.lines_changed == 6
    before = snapshot(root)
    d = gate.apply_patch(udiff("tests/test_app.py", TEST_APP, TEST_APP + "# one more\n"))
    assert d.decision == "deny"
    assert d.reasons[0].rule == "limits.max_lines_per_session"
    assert "at most 0 more lines" in d.reasons[0].message
    assert snapshot(root) == before and gate.session.lines_changed == 6  # a denied edit is not counted


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_real_git_diffs_apply_exactly(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    files = {
        "a.py": "".join(f"line {i}\n" for i in range(40)),
        "crlf.txt": "one\r\ntwo\r\nthree\r\n",
        "noeol.txt": "alpha\nbeta",
        "gone.txt": "bye\n",
        "old_name.py": "".join(f"x = {i}\n" for i in range(20)),
    }
    for name, text in files.items():
        (root / name).write_bytes(text.encode())
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base")
    want = {
        "a.py": files["a.py"]
        .replace("line 3\n", "line three\n")
        .replace("line 30\n", "")
        .replace("line 39\n", "end\n"),
        "crlf.txt": "one\r\n2\r\nthree\r\n",
        "noeol.txt": "alpha\nbeta\ngamma",
        "new/dir/created.py": "print('hi')\n",
        "new_name.py": files["old_name.py"].replace("x = 7\n", "x = 'seven'\n"),
    }
    for name, text in want.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode())
    (root / "gone.txt").unlink()
    (root / "old_name.py").unlink()
    _git(root, "add", "-A")
    patch = _git(root, "diff", "--cached", "-M").decode()
    assert "rename from old_name.py" in patch and "\\ No newline at end of file" in patch
    _git(root, "reset", "-q", "--hard")
    changes = parse_unified_diff(patch, root)
    assert sorted((c.op, c.path) for c in changes) == [
        ("create", "new/dir/created.py"), ("delete", "gone.txt"), ("edit", "a.py"), ("edit", "crlf.txt"),
        ("edit", "noeol.txt"), ("rename", "old_name.py"),
    ]  # fmt: skip
    assert {c.path: c.lines_changed for c in changes}["a.py"] == 5
    decision = Gate(root, audit_path=tmp_path / "audit.jsonl").apply_patch(patch)
    assert decision.decision == "allow", decision
    for name, text in want.items():
        assert (root / name).read_bytes() == text.encode(), name
    assert not (root / "gone.txt").exists() and not (root / "old_name.py").exists()
    _git(root, "add", "-A")
    assert _git(root, "diff", "--cached", "-M").decode() == patch  # git sees exactly the change it described


def test_apply_changes_is_atomic_when_a_file_went_stale(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root)
    patch = APP_EDIT + udiff("tests/test_app.py", TEST_APP, TEST_APP + "# more\n")
    decision, changes = gate.check_patch(patch)
    assert decision.allowed
    (root / "tests" / "test_app.py").write_text(TEST_APP + "# edited meanwhile\n")
    before = snapshot(root)
    with pytest.raises(ValueError, match="changed since"):
        Gate(root)._write(changes)
    assert snapshot(root) == before


def test_symlink_edit_writes_through_to_an_allowed_target(tmp_path):
    root = make_repo(tmp_path / "ws")
    os.symlink("../src/app.py", root / "docs" / "app-link")
    gate = Gate(root)
    d = gate.apply_patch(udiff("docs/app-link", APP, APP.replace("a - b", "b - a")))
    assert d.allowed, d
    assert (root / "src" / "app.py").read_text() == APP.replace("a - b", "b - a")
    assert os.readlink(root / "docs" / "app-link") == "../src/app.py"


POLICY = r"""
[defaults]
decision = "allow"

[[rule]]
name = "vendor-read-only"
decision = "deny"
paths = ["vendor/"]
reason = "vendored code is updated by scripts/vendor.sh"

[[rule]]
name = "our-vendor-patches"
decision = "allow"
priority = 10
paths = ["vendor/ours/**"]

[[rule]]
name = "no-src-without-tests"
decision = "deny"
paths = ["src/**"]
ops = ["edit", "create"]
requires = ["tests/**"]

[[rule]]
name = "no-pickle"
decision = "deny"
paths = ["*.py"]
forbid_imports = ["pickle"]
forbid_apis = ["eval", "os.system"]

[[rule]]
name = "docs-need-review"
decision = "ask"
paths = ["docs/**"]

[[rule]]
name = "docs-typos-ok"
decision = "allow"
paths = ["docs/**"]

[[rule]]
name = "everything-in-git"
decision = "allow"
priority = 1000
paths = [".git/**", ".env"]

[[rule]]
name = "big-files"
decision = "deny"
max_file_bytes = 200
paths = ["data/**"]
"""


def _policy_gate(tmp_path, **kw):
    root = make_repo(tmp_path / "ws", POLICY)
    (root / "vendor" / "ours").mkdir(parents=True)
    (root / "vendor" / "lib.py").write_text("x = 1\n")
    (root / "vendor" / "ours" / "patch.py").write_text("y = 1\n")
    return root, Gate(root, **kw)


def test_rules_and_precedence(tmp_path):
    root, gate = _policy_gate(tmp_path)
    test_edit = udiff("tests/test_app.py", TEST_APP, TEST_APP + "# more\n")

    d = gate.check_patch(APP_EDIT)[0]
    assert d.decision == "deny" and d.reasons[0].rule == "no-src-without-tests"
    assert "must also touch tests/**" in d.reasons[0].message and "add a change to a file matching" in str(d)
    assert gate.check_patch(APP_EDIT + test_edit)[0].decision == "allow"

    d = gate.check_patch(udiff("vendor/lib.py", "x = 1\n", "x = 2\n"))[0]
    assert d.decision == "deny" and "scripts/vendor.sh" in d.reasons[0].message
    assert "change files outside vendor/" in d.reasons[0].message
    d = gate.check_patch(udiff("vendor/ours/patch.py", "y = 1\n", "y = 2\n"))[0]
    assert d.decision == "allow" and d.reasons[0].rule == "our-vendor-patches"  # higher priority wins

    d = gate.check_patch(udiff("docs/guide.md", "# Guide\n\nRead me.\n", "# Guide\n\nRead me!\n"))[0]
    assert d.decision == "ask" and d.reasons[0].rule == "docs-need-review"  # ask beats allow at equal priority
    assert "approval" in d.reasons[0].message

    # a priority-1000 allow rule cannot lift the built-in protections
    assert gate.check_patch(udiff(".git/config", "[core]\n\tbare = false\n", "x\n"))[0].decision == "deny"
    assert gate.check_patch(udiff(".env", "TOKEN=abc\n", "TOKEN=x\n"))[0].decision == "deny"

    d = gate.check_patch(udiff("tools/run.py", None, "import os, pickle\n"))[0]
    assert d.decision == "deny" and "import of pickle" in d.reasons[0].message
    assert gate.check_patch(udiff("tools/run.py", None, "result = os.system('ls')\n"))[0].decision == "deny"
    assert gate.check_patch(udiff("tools/run.py", None, "# we never eval input\nimport pickletools\n"))[0].allowed

    assert gate.check_patch(udiff("data/a.csv", None, "1,2\n" * 40))[0].allowed  # 160 bytes
    d = gate.check_patch(udiff("data/a.csv", None, "1,2\n" * 60))[0]
    assert d.decision == "deny" and "240 bytes, limit 200" in d.reasons[0].message

    assert len(read_audit(root / ".kvblend" / "audit.jsonl")) == 12
    assert verify_audit(root / ".kvblend" / "audit.jsonl") == (True, None)


def test_content_rules_see_only_added_lines(tmp_path):
    root, gate = _policy_gate(tmp_path)
    old = "A = 1\nimport pickle\nB = 2\n"
    (root / "tools").mkdir()
    (root / "tools" / "io.py").write_text(old)
    # changes on both sides of the existing import: the cheap superset holds it, the exact line diff does not
    d = gate.apply_patch(udiff("tools/io.py", old, "A = 10\nimport pickle\nB = 20\n"))
    assert d.decision == "allow", d
    assert (root / "tools" / "io.py").read_text() == "A = 10\nimport pickle\nB = 20\n"
    d = gate.check_patch(
        udiff("tools/io.py", "A = 10\nimport pickle\nB = 20\n", "A = 10\nimport pickle as p\nB = 20\n")
    )[0]
    assert d.decision == "deny" and d.reasons[0].rule == "no-pickle"
    assert "the added lines of tools/io.py contain import of pickle" in d.reasons[0].message


def test_ask_becomes_allow_only_when_approved(tmp_path):
    root, gate = _policy_gate(tmp_path)
    patch = udiff("docs/guide.md", "# Guide\n\nRead me.\n", "# Guide\n\nRead me!\n")
    assert gate.apply_patch(patch).decision == "ask"
    assert (root / "docs" / "guide.md").read_text() == "# Guide\n\nRead me.\n"
    d = gate.apply_patch(patch, approved=True)
    assert d.decision == "allow" and d.reasons[-1].rule == "approved"
    assert (root / "docs" / "guide.md").read_text() == "# Guide\n\nRead me!\n"
    assert gate.apply_patch(udiff("vendor/lib.py", "x = 1\n", "x = 2\n"), approved=True).decision == "deny"


def test_before_apply_hook_runs_only_for_allowed_edits(tmp_path):
    calls = []
    root, gate = _policy_gate(tmp_path, before_apply=lambda changes: calls.append([c.path for c in changes]))
    gate.apply_patch(udiff("vendor/lib.py", "x = 1\n", "x = 2\n"))
    assert calls == []
    gate.apply_patch(udiff("README.md", None, "# hi\n"))
    assert calls == [["README.md"]]
    assert [r["event"] for r in read_audit(root / ".kvblend" / "audit.jsonl")] == ["decision", "decision", "applied"]


def test_changes_built_from_texts(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root)
    c = FileChange.build("edit", "src/app.py", APP, APP.replace("a + b", "a+b").replace("a - b", "a-b"))
    assert c.lines_changed == 4
    assert gate.check([c]).allowed and gate.session.lines_changed == 4
    assert gate.check([FileChange.build("create", "../x.py", None, "x\n")]).decision == "deny"
    assert gate.check([FileChange("rename", "src/app.py", None, APP, APP, 0)]).decision == "deny"
    assert gate.check([]).decision == "deny"


def test_unreadable_audit_log_fails_closed(tmp_path):
    root = make_repo(tmp_path / "ws")
    (tmp_path / "not-a-dir").write_text("")
    gate = Gate(root, audit_path=tmp_path / "not-a-dir" / "audit.jsonl")
    d = gate.apply_patch(udiff("README.md", None, "# hi\n"))
    assert d.decision == "deny" and d.reasons[0].rule == "audit"
    assert not (root / "README.md").exists()


def test_ledger_render(tmp_path):
    root, gate = _policy_gate(tmp_path)
    gate.check_patch(APP_EDIT + udiff("tests/test_app.py", TEST_APP, TEST_APP + "# more\n"))
    led = Ledger(gate.policy, gate.session, identifiers=[f"name_{i}" for i in range(500)])
    led.record_test("tests/test_app.py::test_add", False, "assert 3 == 4")
    led.record_test("tests/test_app.py::test_sub", True)
    text = led.render(max_chars=1500)
    assert len(text) <= 1500
    assert "files touched (2): src/app.py (edit, 2 lines), tests/test_app.py (edit, 1 lines)" in text
    assert "tests run (2, 1 failing): tests/test_app.py::test_add FAILED (assert 3 == 4)" in text
    assert "deny edit/create in src/** without tests/** in the same edit [no-src-without-tests]" in text
    assert "deny any write under .git/, .kvblend/ (built-in)" in text
    assert "identifiers (500): name_0, name_1" in text and "more)" in text
    assert "session: 3 lines changed, 19997 left of 20000" in text
    assert len(Ledger(gate.policy, gate.session, ["a"]).render(max_chars=4000)) < 4000
    assert Ledger(gate.policy, Session()).files_touched == []


def test_policy_object_and_regex_labels(tmp_path):
    import tomllib

    from ledger.policy import parse_policy

    root = make_repo(tmp_path / "ws")
    policy = parse_policy(tomllib.loads('[[rule]]\nname = "words"\ndecision = "deny"\ncontent = ["TODO|FIXME"]\n'))
    gate = Gate(root, policy=policy)
    d = gate.check_patch(udiff("notes.txt", None, "ok\nFIXME later\n"))[0]
    assert d.decision == "deny"
    assert d.reasons[0].message == "rule 'words': the added lines of notes.txt contain /TODO|FIXME/ — remove it"
    assert gate.check_patch(udiff("notes.txt", None, "ok\n"))[0].allowed
