"""Policy loading and schema errors, path normalization, glob semantics; `import ledger` stays torch-free."""

import subprocess
import sys
import tomllib

import pytest

from ledger import Gate, PathError, Policy, PolicyError, load_policy, normalize
from ledger.audit import read_audit
from ledger.paths import GlobSet
from ledger.policy import parse_policy
from tests.ledger_fixtures import make_repo, udiff

GOOD = """
version = 1
[defaults]
decision = "ask"
[limits]
max_lines_per_edit = 50
max_file_bytes = 0
[[rule]]
name = "tests-with-code"
decision = "deny"
priority = 5
reason = "code changes come with tests"
paths = ["src/**"]
ops = ["edit", "create"]
requires = ["tests/**"]
requires_in = "session"
[[rule]]
name = "no-secrets-in-config"
decision = "deny"
paths = "config/"
content = ['password\\s*=']
content_presets = ["passwords"]
"""


def test_load_policy_reads_every_field(tmp_path):
    make_repo(tmp_path / "ws", GOOD)
    p = load_policy(tmp_path / "ws")
    assert p.default_decision == "ask" and p.source.endswith(".kvblend/policy.toml")
    names = [r.name for r in p.rules]
    assert names == [
        "tests-with-code",
        "no-secrets-in-config",
        "limits.max_lines_per_edit",
        "limits.max_lines_per_session",
    ]  # fmt: skip  (max_file_bytes = 0 turns that limit off)
    r = p.rules[0]
    assert (r.decision, r.priority, r.paths, r.ops, r.requires, r.requires_in) == (
        "deny", 5, ("src/**",), ("edit", "create"), ("tests/**",), "session"
    )  # fmt: skip
    assert p.rules[1].paths == ("config/",) and len(p.rules[1].content_regexes) == 3
    assert p.rules[2].max_lines_per_edit == 50 and p.rules[2].priority == 100
    assert p.rules[3].max_lines_per_session == 20000  # the default limit stays unless set


def test_no_policy_file_gives_the_defaults(tmp_path):
    make_repo(tmp_path / "ws")
    p = load_policy(tmp_path / "ws")
    assert p == Policy.default() and p.source is None and p.default_decision == "allow"
    assert [r.name for r in p.rules] == [
        "limits.max_lines_per_edit", "limits.max_lines_per_session", "limits.max_file_bytes"
    ]  # fmt: skip
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "ws", tmp_path / "missing.toml")


# (policy text, substrings the error must contain)
MALFORMED = [
    ('[[rule]]\nname = "r"\ndecision = "block"\n', ["rule[0] 'r'", "field 'decision'", "'block'"]),
    ('[[rule]]\ndecision = "deny"\n', ["rule[0]", "field 'name'"]),
    ('[[rule]]\nname = "ok"\ndecision = "deny"\n[[rule]]\nname = "r2"\ndecision = "deny"\npath = ["x"]\n',
     ["rule[1] 'r2'", "field 'path'", "unknown field"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\nops = ["write"]\n', ["rule[0] 'r'", "field 'ops'", "'write'"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\ncontent = ["(unclosed"]\n', ["field 'content'", "invalid regex"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\npriority = "high"\n', ["field 'priority'", "'high'"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\nmax_lines_per_edit = -3\n', ["field 'max_lines_per_edit'", "-3"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\npaths = [1]\n', ["field 'paths'", "list of non-empty strings"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\nforbid_imports = ["os;rm"]\n', ["field 'forbid_imports'"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\ncontent_presets = ["keys"]\n', ["field 'content_presets'"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\nrequires_in = "session"\n', ["field 'requires_in'"]),
    ('[[rule]]\nname = "r"\ndecision = "deny"\n[[rule]]\nname = "r"\ndecision = "allow"\n',
     ["rule[1] 'r'", "duplicate"]),
    ('[defaults]\ndecision = "maybe"\n', ["[defaults]", "field 'decision'"]),
    ('[limits]\nmax_lines = 3\n', ["[limits]", "field 'max_lines'"]),
    ('[limits]\ndecision = "allow"\n', ["[limits]", "field 'decision'"]),
    ('rules = []\n', ["unknown top-level key", "rules"]),
    ('version = 2\n', ["field 'version'"]),
    ('rule = 3\n', ["array of tables"]),
    ('[[rule]\nname = "r"\n', ["invalid TOML", "line 1"]),
]  # fmt: skip


@pytest.mark.parametrize("text,needles", MALFORMED)
def test_malformed_policy_names_rule_and_field(tmp_path, text, needles):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path, f)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert str(f) in str(e.value)


def test_malformed_policy_fails_closed(tmp_path):
    root = make_repo(tmp_path / "ws", '[[rule]]\nname = "loose"\ndecision = "yes"\n')
    gate = Gate(root)
    assert gate.policy is None and "rule[0] 'loose' field 'decision'" in gate.policy_error
    d = gate.apply_patch(udiff("README.md", None, "# hi\n"))
    assert d.decision == "deny" and d.reasons[0].rule == "policy"
    assert "rule[0] 'loose' field 'decision'" in d.reasons[0].message and "fixed" in d.reasons[0].message
    assert not (root / "README.md").exists()
    assert read_audit(root / ".kvblend" / "audit.jsonl")[0]["decision"] == "deny"


def test_parse_policy_from_data():
    p = parse_policy(tomllib.loads('[[rule]]\nname = "x"\ndecision = "allow"\nops = "delete"\n'))
    assert p.rules[0].ops == ("delete",) and p.source == "policy"
    assert "allow delete [x]" == p.rules[0].summary()


@pytest.mark.parametrize(
    "path,want",
    [("a/b.py", "a/b.py"), ("./a//b/../c.py", "a/c.py"), ("src/./x", "src/x"), ("a/b/", "a/b")],
)
def test_normalize(path, want):
    assert normalize(path) == want


@pytest.mark.parametrize(
    "path,problem",
    [("", "empty"), ("/etc/passwd", "absolute"), ("C:/x", "absolute"), ("../x", "leaves"), ("a/../../x", "leaves"),
     ("a\\..\\x", "backslash"), ("a\0b", "NUL"), (".", "root"), ("a/..", "root")],
)  # fmt: skip
def test_normalize_rejects(path, problem):
    with pytest.raises(PathError, match=problem):
        normalize(path)


@pytest.mark.parametrize(
    "patterns,path,want",
    [
        (["*.py"], "a/b/c.py", True),  # no slash: any depth
        (["/setup.py"], "pkg/setup.py", False),  # leading slash: anchored
        (["src/*.py"], "src/a/b.py", False),  # * stays in one segment
        (["src/**/*.py"], "src/a/b.py", True),
        (["src/**"], "src/a/b.py", True),
        (["docs/"], "docs/x.md", True),  # a directory pattern matches what is inside
        (["docs/"], "docs", False),  # ... but not a file of that name
        (["*.md", "!README.md"], "README.md", False),  # negation, last match wins
        (["docs/", "!docs/keep.md"], "docs/keep.md", True),  # nothing inside a matched directory comes back
        (["file?.txt"], "file10.txt", False),
        (["[ab].txt"], "b.txt", True),
    ],
)
def test_globs_follow_gitignore(patterns, path, want):
    assert GlobSet(patterns).matches(path) is want


def test_glob_case():
    assert GlobSet(["Secrets/"], ignore_case=True).matches("secrets/a")
    assert not GlobSet(["Secrets/"]).matches("secrets/a")


def test_import_ledger_does_not_import_torch():
    code = (
        "import sys, ledger, ledger.gate, ledger.facts, ledger.audit, ledger.changes, kvblend.cli_ledger, "
        "kvblend.bench_ledger\n"
        "from kvblend import cli\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert not any(m == 'indexer' or m.startswith(('indexer.', 'lsp_server', 'blend')) for m in sys.modules)\n"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_documented_example_parses(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "ledger" / "POLICY.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    p = parse_policy(tomllib.loads(example))
    assert [r.name for r in p.rules][:6] == [
        "vendor-read-only", "our-vendor-patches", "no-src-without-tests", "no-unsafe-python",
        "no-literal-passwords", "migrations-need-review",
    ]  # fmt: skip
    assert {r.name: r.max_lines_per_edit for r in p.rules}["limits.max_lines_per_edit"] == 400
    documented_error = doc.split("```\n.kvblend/policy.toml: ", 1)[1].split("\n", 1)[0]
    f = tmp_path / "policy.toml"
    f.write_text('[[rule]]\nname="a"\ndecision="deny"\n[[rule]]\nname="b"\ndecision="deny"\n'
                 '[[rule]]\nname="no-pickle"\ndecision="deny"\nops=["write"]\n')  # fmt: skip
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path, f)
    assert str(e.value) == f"{f}: {documented_error}"


def test_rules_built_in_code_are_validated():
    from ledger import Rule

    with pytest.raises(ValueError, match="decision"):
        Rule(name="x", decision="maybe")
    with pytest.raises(ValueError, match="ops"):
        Rule(name="x", decision="deny", ops=("write",))
