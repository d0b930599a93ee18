"""Fail closed without a traceback: a policy glob or regex Python cannot compile, a damaged audit log.

Through `kvblend.cli.main` in this process (the parser and handlers of `kvblend ledger ...`), and through
`load_policy` / `Session.from_audit` / `Gate`, which those handlers call.
"""

import json
import subprocess

import pytest

from kvblend.cli import main
from ledger import Gate, PolicyError, Rule, Session, load_policy, verify_audit
from ledger.audit import GENESIS, read_audit, record_hash
from tests.ledger_fixtures import APP, make_repo, udiff

EDIT = udiff("src/app.py", APP, APP.replace("a + b", "b + a"))


@pytest.fixture
def ledger_cli(capsys):
    def _run(*args):
        capsys.readouterr()
        rc = main(["ledger", *map(str, args)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    return _run


def _rule(field: str, value: str) -> str:
    return f'[[rule]]\nname = "ok"\ndecision = "allow"\n[[rule]]\nname = "x"\ndecision = "deny"\n{field} = [{value}]\n'


# (TOML field, TOML value (literal strings: no escapes), what the error says about it)
BAD_GLOBS = [
    ("paths", "'[z-a]'", "invalid glob '[z-a]': bad character range z-a"),
    ("paths", "'[!]'", "invalid glob '[!]': unterminated character set"),
    ("paths", "'**/[b-a]*'", "invalid glob '**/[b-a]*': bad character range b-a"),
    ("paths", "'src/', '[!]]'", "invalid glob '[!]]'"),
    ("paths", "'src\\'", "ends with an unescaped backslash"),  # would never match: a deny that protects nothing
    ("requires", "'tests/[9-0]*'", "invalid glob 'tests/[9-0]*'"),
]


@pytest.mark.parametrize("field,value,problem", BAD_GLOBS)
def test_a_bad_glob_is_a_policy_error_and_the_gate_denies(tmp_path, ledger_cli, field, value, problem):
    root = make_repo(tmp_path / "ws", _rule(field, value))
    policy = root / ".kvblend" / "policy.toml"
    (tmp_path / "edit.diff").write_text(EDIT)
    where = f"{policy}: rule[1] 'x' field '{field}': "

    with pytest.raises(PolicyError) as e:
        load_policy(root)
    assert str(e.value).startswith(where) and problem in str(e.value), str(e.value)

    r = ledger_cli("check", "--repo", root, tmp_path / "edit.diff")
    assert r.returncode == 2 and r.stdout.startswith("deny\n") and where in r.stdout
    assert f"kvblend ledger: policy error: {where}" in r.stderr and problem in r.stderr
    records = read_audit(root / ".kvblend" / "audit.jsonl")
    assert [x["decision"] for x in records] == ["deny"] and records[0]["reasons"][0]["rule"] == "policy"
    assert (root / "src" / "app.py").read_text() == APP

    r = ledger_cli("render", "--repo", root)
    assert r.returncode == 2 and r.stdout == "" and where in r.stderr


@pytest.mark.parametrize(
    "pattern,problem",
    [
        ("a{4294967296}", "the repetition number is too large"),  # OverflowError from re
        ("(" * 2000 + ")" * 2000, "maximum recursion depth"),  # RecursionError from re
        ("(unclosed", "missing ), unterminated subpattern"),
    ],
)
def test_a_content_regex_python_cannot_compile_is_a_policy_error(tmp_path, pattern, problem):
    f = tmp_path / "policy.toml"
    f.write_text(_rule("content", f"'{pattern}'"))
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path, f)
    assert str(e.value).startswith(f"{f}: rule[1] 'x' field 'content': invalid regex") and problem in str(e.value)


def test_rules_built_in_code_raise_value_error_for_bad_globs_and_regexes():
    for kw in ({"paths": ("[z-a]",)}, {"requires": ("[!]",)}, {"content": ("a{4294967296}",)}):
        with pytest.raises(ValueError, match="invalid"):
            Rule(name="x", decision="deny", **kw)


def _record(seq: int, prev: str, **fields) -> dict:
    rec = {"event": "note", **fields, "seq": seq, "prev": prev}
    rec["hash"] = record_hash(rec)
    return rec


def _line(rec) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


GOOD = _record(1, GENESIS)

# (bytes of a log whose last record is damaged, the line verify-audit names)
DAMAGED_LOGS = {
    "list": (_line(GOOD) + b"[1, 2]\n", 2),
    "string": (_line(GOOD) + b'"deny"\n', 2),
    "null": (b"null\n", 1),
    "binary": (b"\xc8\x17\x19\xd7\x8fu\x89Gd\nPh\x15\x99}\x84\xb2\x11\x00\xa1\x04\xcb1b\n", 1),
    "nested too deep": (_line(GOOD) + b"[" * 100_000 + b"\n", 2),
    "bom": (b"\xef\xbb\xbf" + _line(GOOD), 1),  # json.loads(bytes) would accept it; read_audit would not
    "seq not an integer": (_line(_record(1, GENESIS) | {"seq": "x"}), 1),
    "seq a bool": (_line(_record(True, GENESIS)), 1),  # hash valid, but True is no sequence number
    "seq zero": (_line(_record(0, GENESIS)), 1),
    "hash missing": (_line({k: v for k, v in GOOD.items() if k != "hash"}), 1),
    "lone surrogate": (_line(GOOD) + b'{"seq": 2, "note": "\\ud800", "hash": null}\n', 2),
    "torn": (_line(GOOD)[:-1], 1),  # a complete record without its newline: an append would join the line
    "blank last line": (_line(GOOD) + b"\n", 2),  # was read as an empty log: the chain restarted at GENESIS
}


@pytest.mark.parametrize("name", DAMAGED_LOGS)
def test_a_damaged_last_record_denies_through_the_cli(tmp_path, ledger_cli, name):
    data, bad_line = DAMAGED_LOGS[name]
    root = make_repo(tmp_path / "ws")
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(data)
    (tmp_path / "edit.diff").write_text(EDIT)

    for session in ([], ["--session", "s1"]):
        r = ledger_cli("check", "--repo", root, "--audit", audit, *session, tmp_path / "edit.diff")
        assert r.returncode == 1 and r.stdout.startswith("deny\n"), r.stdout + r.stderr
        assert f"the last record of {audit} is damaged" in r.stdout and "verify-audit" in r.stdout
        r = ledger_cli("apply", "--repo", root, "--audit", audit, *session, "--json", tmp_path / "edit.diff")
        out = json.loads(r.stdout)
        assert r.returncode == 1 and out["decision"] == "deny" and out["reasons"][0]["rule"] == "audit"
    assert audit.read_bytes() == data and (root / "src" / "app.py").read_text() == APP

    r = ledger_cli("render", "--repo", root, "--audit", audit, "--session", "s1")
    assert r.returncode == 0 and "files touched (0): none" in r.stdout
    r = ledger_cli("verify-audit", audit, "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == {"ok": False, "first_bad_line": bad_line, "records": None}


def test_damaged_records_inside_the_log_are_skipped_when_a_session_is_rebuilt(tmp_path, ledger_cli):
    root = make_repo(tmp_path / "ws")
    audit = tmp_path / "audit.jsonl"
    gate = Gate(root, audit_path=audit, session=Session(id="s1"))
    gate.apply_patch(udiff("README.md", None, "a\nb\n"))  # allowed: 2 lines, then an `applied` record
    lines = audit.read_bytes().splitlines(keepends=True)

    def allowed(**fields):
        return _line({"event": "decision", "session": "s1", "decision": "allow", **fields})

    change = {"op": "edit", "path": "src/app.py", "new_path": None, "lines": 7}
    damaged = [
        b"[1, 2]\n",
        b"\xff\xfe not UTF-8\n",
        b"{not json\n",
        b"[" * 100_000 + b"\n",
        allowed(),  # no changes
        allowed(changes=5),
        allowed(changes=[5]),
        allowed(changes=[change | {"path": 5}]),
        allowed(changes=[change | {"lines": "7"}]),
        allowed(changes=[change | {"lines": True}]),
        allowed(changes=[change | {"lines": -7}]),
        allowed(changes=[{k: v for k, v in change.items() if k != "lines"}]),
        allowed(changes=[change | {"op": "write"}]),
        allowed(changes=[change | {"op": "rename"}]),  # a rename without its target
        allowed(changes=[change | {"new_path": ["x"]}]),
        allowed(changes=[change, 5]),  # one bad change spoils the whole record
        _line({"event": "decision", "session": 5, "decision": "allow", "changes": [change]}),  # another session
        _line({"event": "decision", "session": "s1", "decision": ["allow"], "changes": [change]}),
    ]
    audit.write_bytes(lines[0] + b"".join(damaged) + lines[1])  # the last record stays intact

    s = Session.from_audit(audit, "s1")
    assert s.lines_changed == 2 and list(s.touched) == ["README.md"] and s.edits == 1

    r = ledger_cli("render", "--repo", root, "--audit", audit, "--session", "s1")
    assert r.returncode == 0 and "files touched (1): README.md (create, 2 lines)" in r.stdout
    (tmp_path / "edit.diff").write_text(EDIT)
    r = ledger_cli("check", "--repo", root, "--audit", audit, "--session", "s1", "--json", tmp_path / "edit.diff")
    assert r.returncode == 0 and json.loads(r.stdout)["decision"] == "allow", r.stdout + r.stderr
    assert Session.from_audit(audit, "s1").lines_changed == 2 + 2  # the allowed check counts in the session
    assert verify_audit(audit) == (False, 2)


def test_an_audit_path_that_cannot_be_read_denies(tmp_path, ledger_cli):
    root = make_repo(tmp_path / "ws")
    (tmp_path / "edit.diff").write_text(EDIT)
    audit = tmp_path / "a-directory"
    audit.mkdir()
    assert Session.from_audit(audit, "s1").lines_changed == 0
    r = ledger_cli("check", "--repo", root, "--audit", audit, "--session", "s1", tmp_path / "edit.diff")
    assert r.returncode == 1 and r.stdout.startswith("deny\n") and "cannot append to audit log" in r.stdout


def test_verify_and_read_split_records_only_at_newlines(tmp_path, ledger_cli):
    audit = tmp_path / "audit.jsonl"
    second = _record(2, GOOD["hash"], note="x")
    text = _line(second).decode().replace(',"note"', ',\r"note"')  # JSON allows \r between tokens
    audit.write_bytes(_line(GOOD) + text.encode())
    r = ledger_cli("verify-audit", audit, "--json")
    # read as one line (not split at the \r), and an edited one: the writer never puts a \r there
    assert r.returncode == 1 and json.loads(r.stdout) == {"ok": False, "first_bad_line": 2, "records": None}
    assert read_audit(audit) == [GOOD, second]
