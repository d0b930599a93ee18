"""Per-session accounting through symlinks: a file counts once, under its real path inside the workspace,
whatever name (a file link, a directory link) an edit used; the session rebuilt from the audit log agrees."""

import os

import pytest

from ledger import FileChange, Gate, Ledger, Session
from tests.ledger_fixtures import TEST_APP, make_repo

SESSION_CAP = '[[rule]]\nname = "cap"\ndecision = "deny"\npaths = ["src/**"]\nmax_lines_per_session = 3\n'


def _linked_repo(tmp_path, policy: str):
    root = make_repo(tmp_path / "ws", policy)
    os.symlink("../src/app.py", root / "docs" / "app-link")  # a file link to src/app.py
    os.symlink("src", root / "lib")  # a directory link: lib/app.py is src/app.py
    return root


def _append(gate: Gate, path: str, line: str):
    old = (gate.root / "src" / "app.py").read_text()
    return gate.apply([FileChange.build("edit", path, old, old + line)])


@pytest.mark.parametrize("link", ["docs/app-link", "lib/app.py", "./lib//app.py"])
def test_an_edit_through_a_link_counts_toward_the_targets_session_limit(tmp_path, link):
    root = _linked_repo(tmp_path, SESSION_CAP)
    gate = Gate(root, session=Session(id="s"))
    assert _append(gate, link, "a = 1\nb = 2\n").decision == "allow"
    # 4 lines under src/** in this session: over 3 (the link's 2 lines used to be booked under the link's name)
    d = _append(gate, "src/app.py", "c = 3\nd = 4\n")
    assert d.decision == "deny" and d.reasons[0].rule == "cap", d.reasons
    assert "already changed 2 lines" in d.reasons[0].message
    assert list(gate.session.touched) == ["src/app.py"]  # one file, not two
    assert gate.session.touched["src/app.py"].lines == 2
    assert gate.session.touched["src/app.py"].links == [os.path.normpath(link)]


def test_a_file_touched_under_two_names_is_one_file_of_the_session(tmp_path):
    root = _linked_repo(tmp_path, None)
    gate = Gate(root, session=Session(id="s"))
    for path in ("src/app.py", "docs/app-link", "lib/app.py"):
        assert _append(gate, path, f"# via {path}\n").allowed
    assert list(gate.session.touched) == ["src/app.py"]
    assert gate.session.touched["src/app.py"].lines == 3 and gate.session.lines_changed == 3
    assert gate.session.touched["src/app.py"].links == ["docs/app-link", "lib/app.py"]
    assert "files touched (1): src/app.py (edit, 3 lines)" in Ledger(gate.policy, gate.session).render()


def test_the_session_rebuilt_from_the_audit_log_resolves_links_as_they_were(tmp_path):
    root = _linked_repo(tmp_path, SESSION_CAP)
    gate = Gate(root, session=Session(id="s"))
    assert _append(gate, "docs/app-link", "a = 1\nb = 2\n").allowed
    os.unlink(root / "docs" / "app-link")  # the log, not today's filesystem, says where the lines went
    rebuilt = Session.from_audit(gate.audit.path, "s")
    assert list(rebuilt.touched) == ["src/app.py"] and rebuilt.touched["src/app.py"].links == ["docs/app-link"]
    d = _append(Gate(root, session=rebuilt), "src/app.py", "c = 3\nd = 4\n")
    assert d.decision == "deny" and d.reasons[0].rule == "cap", d.reasons


def test_a_limit_scoped_by_the_links_name_still_counts_edits_through_it(tmp_path):
    policy = SESSION_CAP.replace('"src/**"', '"docs/**"')
    root = _linked_repo(tmp_path, policy)
    gate = Gate(root, session=Session(id="s"))
    assert _append(gate, "docs/app-link", "a = 1\nb = 2\n").allowed
    d = _append(gate, "docs/app-link", "c = 3\nd = 4\n")
    assert d.decision == "deny" and d.reasons[0].rule == "cap", d.reasons
    assert _append(gate, "src/app.py", "e = 5\n").allowed  # outside docs/** by its own name


def test_a_session_companion_touched_through_a_link_counts(tmp_path):
    policy = (
        '[[rule]]\nname = "tests-first"\ndecision = "deny"\npaths = ["src/**"]\nrequires = ["tests/**"]\n'
        'requires_in = "session"\n'
    )
    root = make_repo(tmp_path / "ws", policy)
    os.symlink("tests", root / "checks")
    gate = Gate(root, session=Session(id="s"))
    assert gate.apply([FileChange.build("edit", "checks/test_app.py", TEST_APP, TEST_APP + "# more\n")]).allowed
    assert list(gate.session.touched) == ["tests/test_app.py"]
    assert _append(gate, "src/app.py", "x = 1\n").allowed  # tests/** was touched in this session
