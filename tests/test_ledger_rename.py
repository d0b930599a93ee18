"""A rename followed by edits of the new name (as an LSP client applies a RenameFile and then TextDocumentEdits
of the new uri) is one change, judged under both names and written as one; anything else that writes one file
twice is still denied."""

import difflib

import pytest

from ledger import FileChange, Gate, Session
from ledger.audit import read_audit
from ledger.changes import merge_renames
from tests.ledger_fixtures import APP, make_repo, snapshot

EDITED = APP.replace("a - b", "b - a")
RENAME = FileChange.build("rename", "src/app.py", APP, APP, new_path="src/calc.py")
EDIT = FileChange.build("edit", "src/calc.py", APP, EDITED)


def test_a_rename_then_an_edit_of_the_new_name_is_one_change(tmp_path):
    root = make_repo(tmp_path / "ws")
    gate = Gate(root, session=Session(id="s"))
    d = gate.apply([RENAME, EDIT])  # used to be denied: "src/calc.py is changed twice in one edit"
    assert d.decision == "allow", d.reasons
    assert not (root / "src" / "app.py").exists() and (root / "src" / "calc.py").read_text() == EDITED
    decision = read_audit(root / ".kvblend" / "audit.jsonl")[0]
    assert decision["changes"] == [{"op": "rename", "path": "src/app.py", "new_path": "src/calc.py", "lines": 2}]
    touched = gate.session.touched
    assert list(touched) == ["src/app.py", "src/calc.py"] and touched["src/calc.py"].lines == 2


def test_successive_edits_and_spellings_of_the_new_name_fold_into_the_rename():
    more = EDITED + "# end\n"
    merged = merge_renames([RENAME, EDIT, FileChange.build("edit", "./src//calc.py", EDITED, more)])
    assert [(c.op, c.path, c.new_path, c.old_text, c.new_text, c.lines_changed) for c in merged] == [
        ("rename", "src/app.py", "src/calc.py", APP, more, 3)
    ]
    plain = [FileChange.build("edit", "src/app.py", APP, EDITED)]
    assert merge_renames(plain) is plain  # nothing to fold: the same list


@pytest.mark.parametrize(
    "second",
    [
        FileChange.build("edit", "src/calc.py", "stale\n", "x = 1\n"),  # not computed on the text the rename left
        FileChange.build("edit", "src/app.py", APP, EDITED),  # the old name, gone after the rename
        FileChange.build("create", "src/calc.py", None, "x = 1\n"),
    ],
    ids=["stale", "old-name", "create"],
)
def test_other_second_writes_of_a_renamed_file_are_still_denied(tmp_path, second):
    root = make_repo(tmp_path / "ws")
    before = snapshot(root)
    d = Gate(root).apply([RENAME, second])
    assert d.decision == "deny" and d.reasons[0].rule == "patch" and "changed twice" in d.reasons[0].message
    assert snapshot(root) == before


def _rule(name: str, paths: str, extra: str = "") -> str:
    return f'[[rule]]\nname = "{name}"\ndecision = "deny"\npaths = [{paths}]\n{extra}'


@pytest.mark.parametrize(
    "policy,rule",
    [
        # the new name: the file written there is judged by the rules of its new place
        (_rule("legacy-frozen", '"legacy/**"'), "legacy-frozen"),
        # the old name: moving a protected file away removes it there, whatever the new name
        (_rule("app-stays", '"src/app.py"', 'ops = ["rename", "delete"]\n'), "app-stays"),
        # the edit part is an edit: a rule on edits sees what it adds, though the change is a rename
        (_rule("no-pickle", '"*.py"', 'ops = ["edit"]\nforbid_imports = ["pickle"]\n'), "no-pickle"),
    ],
    ids=["new-path", "old-path", "edit-rule"],
)
def test_rules_on_either_name_and_on_edits_apply_to_the_merged_change(tmp_path, policy, rule):
    root = make_repo(tmp_path / "ws", policy)
    rename = FileChange.build("rename", "src/app.py", APP, APP, new_path="legacy/app.py")
    edit = FileChange.build("edit", "legacy/app.py", APP, "import pickle\n" + APP)
    before = snapshot(root)
    d = Gate(root).apply([rename, edit])
    assert d.decision == "deny" and [r.rule for r in d.reasons] == [rule], d.reasons  # not the double write
    assert snapshot(root) == before


def test_a_rename_that_changes_nothing_is_no_edit_for_rules(tmp_path):
    root = make_repo(tmp_path / "ws", _rule("no-edits", '"*.py"', 'ops = ["edit"]\n'))
    gate = Gate(root)
    assert gate.check([RENAME]).decision == "allow"
    assert gate.check([RENAME, EDIT]).decision == "deny"
    assert RENAME.ops == ("rename",) and merge_renames([RENAME, EDIT])[0].ops == ("rename", "edit")


def test_the_merged_change_counts_its_edited_lines_toward_limits(tmp_path):
    cap = _rule("cap", '"src/**"', "max_lines_per_edit = 1\n")
    gate = Gate(make_repo(tmp_path / "ws", cap))
    d = gate.check([RENAME, EDIT])
    assert d.decision == "deny" and "this edit changes 2 lines" in d.reasons[0].message, d.reasons
    assert gate.check([RENAME, FileChange.build("edit", "src/calc.py", APP, APP + "\n")]).allowed


def test_a_git_rename_with_changes_is_an_edit_for_rules_too(tmp_path):
    root = make_repo(tmp_path / "ws", _rule("no-pickle", '"*.py"', 'ops = ["edit"]\nforbid_imports = ["pickle"]\n'))
    body = "".join(difflib.unified_diff(APP.splitlines(True), ("import pickle\n" + APP).splitlines(True), "a", "b"))
    head = "diff --git a/src/app.py b/src/calc.py\nsimilarity index 90%\n"
    head += "rename from src/app.py\nrename to src/calc.py\n"
    patch = head + body.replace("--- a", "--- a/src/app.py", 1).replace("+++ b", "+++ b/src/calc.py", 1)
    d = Gate(root).apply_patch(patch)  # used to be allowed: a rename was never an edit for `ops`
    assert d.decision == "deny" and [r.rule for r in d.reasons] == ["no-pickle"], d.reasons
    assert (root / "src" / "app.py").read_text() == APP and not (root / "src" / "calc.py").exists()
