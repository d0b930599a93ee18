"""Semantics probes of the ledger: path spellings, a file changed twice, the gate's own files, exact audit
bytes, lone surrogates, Unicode normalization, gitignore details, trailing dots, audit timestamps."""

import json
import os
import time
import unicodedata

import pytest

from ledger import FileChange, Gate, Session, verify_audit
from ledger.audit import AuditLog, read_audit
from ledger.paths import GlobSet
from tests.ledger_fixtures import APP, GITHUB_TOKEN, make_repo, udiff

SESSION_CAP = '[[rule]]\nname = "cap"\ndecision = "deny"\npaths = ["src/**"]\nmax_lines_per_session = 3\n'


def _append(gate: Gate, path: str, line: str):
    old = (gate.root / "src" / "app.py").read_text()
    return gate.apply([FileChange.build("edit", path, old, old + line)])


@pytest.mark.parametrize("spelling", ["./src/app.py", "src//app.py", "src/./app.py", "docs/../src/app.py"])
def test_session_limits_count_every_spelling_of_a_path(tmp_path, spelling):
    root = make_repo(tmp_path / "ws", SESSION_CAP)
    gate = Gate(root, session=Session(id="s"))
    assert _append(gate, "src/app.py", "a = 1\nb = 2\n").decision == "allow"
    d = _append(gate, spelling, "c = 3\nd = 4\n")  # 4 lines under src/** in this session: over 3
    assert d.decision == "deny" and d.reasons[0].rule == "cap", d.reasons
    assert list(gate.session.touched) == ["src/app.py"]
    # the session rebuilt from the log names the file the same way
    gate.apply([FileChange.build("create", "./tests/new.py", None, "x = 1\n")])
    assert list(Session.from_audit(gate.audit.path, "s").touched) == ["src/app.py", "tests/new.py"]


def test_a_file_changed_twice_in_one_edit_is_denied(tmp_path):
    root = make_repo(tmp_path / "ws")
    os.symlink("../src/app.py", root / "docs" / "app-link")
    gate = Gate(root)
    # applied one after the other (as an LSP client applies two TextDocumentEdits of one document), these two
    # halves form a token that neither check saw
    first = FileChange.build("edit", "src/app.py", APP, APP + 'T = "ghp_"\n')
    second = FileChange.build("edit", "./src/app.py", APP, APP + f'T = "{GITHUB_TOKEN[4:]}"\n')
    for pair in ([first, second], [first, FileChange.build("edit", "docs/app-link", APP, APP + "# x\n")]):
        d = gate.apply(pair)
        assert d.decision == "deny" and d.reasons[0].rule == "patch" and "changed twice" in d.reasons[0].message
    assert (root / "src" / "app.py").read_text() == APP
    assert gate.check([first]).decision == "allow"  # one change of the file is judged as before


def test_the_gates_own_policy_and_audit_files_are_protected(tmp_path):
    root = make_repo(tmp_path / "ws")
    (root / "policy.toml").write_text('[defaults]\ndecision = "allow"\n')
    gate = Gate(root, audit_path=root / "logs" / "audit.jsonl", policy_path=root / "policy.toml")
    gate.check([FileChange.build("create", "src/new.py", None, "x = 1\n")])  # creates the log
    log_text = (root / "logs" / "audit.jsonl").read_text()
    attempts = [
        FileChange.build("edit", "policy.toml", '[defaults]\ndecision = "allow"\n', "# no rules\n"),
        FileChange.build("edit", "POLICY.toml.", '[defaults]\ndecision = "allow"\n', "# no rules\n"),
        FileChange.build("delete", "logs/audit.jsonl", log_text, None),
        FileChange.build("rename", "src/app.py", APP, APP, new_path="logs/audit.jsonl"),
    ]
    for change in attempts:
        d = gate.check([change])
        assert d.decision == "deny" and d.reasons[0].rule == "builtin.protected-path", (change, d.reasons)
    d, _ = gate.check_patch(udiff("policy.toml", '[defaults]\ndecision = "allow"\n', "# none\n"))
    assert d.decision == "deny" and "this gate's policy file (policy.toml)" in d.reasons[0].message
    assert verify_audit(root / "logs" / "audit.jsonl") == (True, None)


def test_verify_audit_detects_byte_edits_that_parse_to_the_same_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append({"event": "decision", "decision": "allow", "i": i})
    lines = path.read_text().splitlines(keepends=True)
    edits = {
        "a key repeated in front (a first-wins reader sees deny)": '{"decision":"deny",' + lines[1][1:],
        "spacing": lines[1].replace(",", ", "),
    }
    for name, edited in edits.items():
        path.write_text(lines[0] + edited + lines[2])
        assert json.loads(edited) == json.loads(lines[1])  # Python reads the same record
        assert verify_audit(path) == (False, 2), name


def test_lone_surrogates_are_denied_and_logged(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root)
    for change in (
        FileChange.build("create", "src/\ud800.py", None, "x = 1\n"),  # JSON allows "\ud800" in an LSP uri
        FileChange.build("create", "src/ok.py", None, "x = '\udc80'\n"),
    ):
        d = gate.apply([change])
        assert d.decision == "deny" and "surrogate" in d.reasons[0].message, d.reasons
    assert not (root / "src" / "ok.py").exists()
    records = read_audit(root / ".kvblend" / "audit.jsonl")
    assert [r["decision"] for r in records] == ["deny", "deny"] and "\\ud800" in records[0]["changes"][0]["path"]
    assert verify_audit(root / ".kvblend" / "audit.jsonl") == (True, None)


def test_globs_typed_in_nfd_match_paths_in_nfc(tmp_path):
    nfd = unicodedata.normalize("NFD", "données/")
    assert nfd != "données/" and GlobSet([nfd], ignore_case=True).matches("données/a.csv")
    policy = f'[[rule]]\nname = "data"\ndecision = "deny"\npaths = ["{nfd}"]\n'
    gate = Gate(make_repo(tmp_path / "ws", policy))
    for spelling in ("données/a.csv", unicodedata.normalize("NFD", "données/a.csv")):
        assert gate.check([FileChange.build("create", spelling, None, "1\n")]).decision == "deny"


@pytest.mark.parametrize(
    "pattern,path,want",
    [
        ("docs/**.md", "docs/sub/a.md", False),  # `**` not a whole segment is a plain `*` (git)
        ("docs/**.md", "docs/a.md", True),
        ("a**b", "ax/b", False),
        ("a/**b", "a/x/b", False),
        ("a/**/b", "a/x/y/b", True),  # ... as a whole segment it spans directories
        ("**/b", "x/y/b", True),
        ("a[/]b", "a/b", False),  # a class never matches `/`
        ("a[!x]b", "a/b", False),
        ("a[!x]b", "ayb", True),
        ("foo\\ ", "foo ", True),  # an escaped trailing space is kept
    ],
)
def test_globs_follow_gitignore_for_double_stars_classes_and_spaces(pattern, path, want):
    assert GlobSet([pattern]).matches(path) is want


def test_deny_rules_ignore_trailing_dots_and_spaces_allow_rules_do_not(tmp_path):
    policy = (
        '[[rule]]\nname = "vendor"\ndecision = "deny"\npaths = ["vendor/"]\n'
        '[[rule]]\nname = "docs-only"\ndecision = "allow"\npriority = 5\npaths = ["docs/"]\n'
        '[defaults]\ndecision = "ask"\n'
    )
    gate = Gate(make_repo(tmp_path / "ws", policy))
    for path in ("vendor./x.py", "vendor /x.py", "VENDOR../x.py"):  # on Windows all of these write vendor/x.py
        d = gate.check([FileChange.build("create", path, None, "x\n")])
        assert d.decision == "deny" and d.reasons[0].rule == "vendor", path
    # an allow exception stays as narrow as written: `docs./x` is no file under docs/ on Linux
    assert gate.check([FileChange.build("create", "docs./x.md", None, "x\n")]).decision == "ask"


def test_audit_time_is_one_clock_reading(tmp_path, monkeypatch):
    ns = 1_700_000_005_999_999_000  # the last microsecond of a second
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    gate = Gate(make_repo(tmp_path / "ws"))
    gate.check([FileChange.build("create", "src/new.py", None, "x = 1\n")])
    assert read_audit(gate.audit.path)[0]["time"] == "2023-11-14T22:13:25.999999Z"
