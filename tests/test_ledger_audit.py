"""The audit log: every decision is in it, the hash chain verifies, and tampering is detected."""

import json

import pytest

from ledger import AuditLog, Gate, Session, verify_audit
from ledger.audit import GENESIS, read_audit, record_hash
from tests.ledger_fixtures import APP, make_repo, udiff


def _log_with_decisions(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root)
    gate.apply_patch(udiff("README.md", None, "# hi\n"))  # allow (+ applied)
    gate.check_patch(udiff(".git/config", "[core]\n\tbare = false\n", "x\n"))  # deny
    gate.check_patch("@@ nonsense\n")  # deny (malformed)
    gate.apply_patch(udiff("src/app.py", APP, APP + "# end\n"))  # allow (+ applied)
    return gate.audit.path


def test_every_decision_is_logged_and_the_chain_verifies(tmp_path):
    path = _log_with_decisions(tmp_path)
    records = read_audit(path)
    assert [(r["event"], r.get("decision")) for r in records] == [
        ("decision", "allow"), ("applied", None), ("decision", "deny"), ("decision", "deny"), ("decision", "allow"),
        ("applied", None),
    ]  # fmt: skip
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:], strict=False))
    assert all(r["hash"] == record_hash(r) for r in records)
    assert records[2]["reasons"][0]["rule"] == "builtin.protected-path"
    assert records[3]["reasons"][0]["rule"] == "patch" and len(records[3]["patch_sha256"]) == 64
    assert records[4]["changes"] == [{"op": "edit", "path": "src/app.py", "new_path": None, "lines": 1}]
    assert verify_audit(path) == (True, None)


def _rewrite(path, fn):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(fn(lines)))


def _flip(line):
    rec = json.loads(line)
    rec["decision"] = "allow"
    return json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"


def _flip_and_rehash(line):  # written as the writer would: only the `prev` link of the next line breaks
    rec = json.loads(_flip(line))
    rec["hash"] = record_hash(rec)
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


@pytest.mark.parametrize(
    "tamper,bad_line",
    [
        (lambda ls: ls[:2] + [_flip(ls[2])] + ls[3:], 3),  # a deny turned into an allow
        (lambda ls: ls[:2] + [_flip_and_rehash(ls[2])] + ls[3:], 4),  # ... with its own hash recomputed
        (lambda ls: ls[:1] + ls[2:], 2),  # a line removed
        (lambda ls: ls[:3] + [ls[1]] + ls[3:], 4),  # a line replayed
        (lambda ls: [ls[1], ls[0]] + ls[2:], 1),  # two lines swapped
        (lambda ls: ls[:5] + ["{not json\n"], 6),  # a damaged line
        (lambda ls: ls[:5] + [ls[5].rstrip("\n")], 6),  # a torn last line
    ],
)
def test_tampering_is_detected(tmp_path, tamper, bad_line):
    path = _log_with_decisions(tmp_path)
    _rewrite(path, tamper)
    assert verify_audit(path) == (False, bad_line)


def test_a_damaged_last_record_stops_the_gate(tmp_path):
    path = _log_with_decisions(tmp_path)
    _rewrite(path, lambda ls: ls[:-1] + [_flip(ls[-1])])
    gate = Gate(tmp_path / "ws")
    d = gate.apply_patch(udiff("NEW.md", None, "x\n"))
    assert d.decision == "deny" and d.reasons[0].rule == "audit" and "verify-audit" in d.reasons[0].message
    assert not (tmp_path / "ws" / "NEW.md").exists()


def test_writers_sharing_a_log_keep_one_chain(tmp_path):
    a, b = AuditLog(tmp_path / "log.jsonl"), AuditLog(tmp_path / "log.jsonl")
    for i in range(6):
        (a if i % 2 else b).append({"event": "note", "i": i})
    assert [r["i"] for r in read_audit(tmp_path / "log.jsonl")] == list(range(6))
    assert verify_audit(tmp_path / "log.jsonl") == (True, None)
    assert a.head() == read_audit(tmp_path / "log.jsonl")[-1]["hash"]
    assert AuditLog(tmp_path / "none.jsonl").head() == GENESIS


def test_session_is_rebuilt_from_the_log(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root, session=Session(id="s1"))
    gate.apply_patch(udiff("README.md", None, "a\nb\n"))
    gate.apply_patch(udiff(".env", "TOKEN=abc\n", None))  # denied: not counted
    gate.apply_patch(udiff("src/app.py", APP, APP + "# end\n"))
    Gate(root, session=Session(id="other")).apply_patch(udiff("OTHER.md", None, "x\n"))
    s = Session.from_audit(gate.audit.path, "s1")
    assert s.lines_changed == 3 and list(s.touched) == ["README.md", "src/app.py"] and s.edits == 2
    assert Session.from_audit(tmp_path / "missing.jsonl", "s1").lines_changed == 0
