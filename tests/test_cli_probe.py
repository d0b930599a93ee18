"""Edge cases of `kvblend complete` and `kvblend generate`: line ends, cursors, cut-off characters, paths."""

from __future__ import annotations

import pytest

from blend.generate import Generation
from blend.loader import DEFAULT_MODEL_DIR
from blend.tokenizer import Tokenizer
from kvblend import cli
from kvblend.completion import Completion


@pytest.mark.parametrize(
    "text, line, col, offset",
    [
        ("a = 1\r\nbc = 2\r\n", 1, 6, 5),  # a CRLF line ends before its \r, where the user sees it
        ("a = 1\r\nbc = 2\r\n", 2, 7, 13),
        ("a = 1\r\nbc = 2\r\n", 3, 1, 15),  # the position after the last line end
        ("a = 1\rbc = 2", 2, 1, 6),  # old Mac line ends: the language server counts them as lines too
        ("x = 1", 1, 6, 5),  # no line end at the end of the file
        ("", 1, 1, 0),
        ("s = 'é'\n", 1, 7, 6),  # columns count characters, not bytes
    ],
)
def test_cursor_lines_end_where_the_language_server_ends_them(text, line, col, offset):
    assert cli._cursor(text, line, col) == offset


@pytest.mark.parametrize(
    "text, line, col, message",
    [
        ("a = 1\r\nb = 2\r\n", 1, 7, r"column 7 outside line 1 \(1..6\)"),  # between \r and \n
        ("a = 1\rb = 2", 3, 1, r"line 3 outside the file \(1..2\)"),
        ("x = 1", 0, 1, r"line 0 outside"),
        ("x = 1", 1, 0, r"column 0 outside"),
    ],
)
def test_cursor_outside_the_file(text, line, col, message):
    with pytest.raises(ValueError, match=message):
        cli._cursor(text, line, col)


def test_generate_never_prints_a_cut_off_character(tmp_path, monkeypatch, capsys):
    """A --max-tokens that ends inside a multi-byte character printed U+FFFD for its first bytes."""
    tok = Tokenizer.from_dir(DEFAULT_MODEL_DIR)
    ids = tok.encode("x = '日本'")
    cut_off = next(ids[:k] for k in range(len(ids)) if tok.decode(ids[:k]).startswith("x = '日\ufffd"))
    monkeypatch.setattr("blend.generate.generate", lambda *a, **k: Generation(cut_off, "max_tokens"))
    (tmp_path / "p.py").write_text("# text\n")
    assert cli.main(["generate", "--prompt-file", str(tmp_path / "p.py"), "--max-tokens", str(len(cut_off))]) == 0
    assert capsys.readouterr().out == "x = '日"


def test_complete_marks_the_file_itself_recent_from_a_relative_path(tmp_path, monkeypatch, capsys):
    """`--file` relative to the shell's directory was read relative to the workspace root by the indexer:
    another file (or none) was marked as the one being edited."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "mod.py").write_text("TOP = 1\n")
    (root / "pkg" / "mod.py").write_text("def f():\n    return 2\n")
    seen = {}

    def complete(self, req, cancelled=None):
        seen["recent"], seen["path"] = list(self.indexer.recent), req.path
        return Completion("x", "eos")

    monkeypatch.setattr("kvblend.completer.Completer.complete", complete)
    monkeypatch.chdir(root / "pkg")
    assert cli.main(["complete", "--file", "mod.py", "--line", "2", "--col", "5"]) == 0
    assert capsys.readouterr().out == "x"
    assert seen == {"recent": ["pkg/mod.py"], "path": "pkg/mod.py"}
