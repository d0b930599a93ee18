"""kvblend.lines: the one way lines are counted (the server, the CLI, the stop rules, the eval's holes)."""

import pytest

from kvblend.lines import LINE_END, iter_lines, line_bounds, line_starts, lines_of, split_ends
from lsp_server.convert import lsp_lines

TEXT = "a\r\nbb\rc\fd\n\ne"  # CRLF, a lone CR, a form feed inside a line (not a line end), LF, an empty line


def test_lines_end_at_crlf_cr_and_lf_only():
    assert lines_of(TEXT) == ["a", "bb", "c\fd", "", "e"] == list(iter_lines(TEXT))
    assert line_starts(TEXT) == [0, 3, 6, 10, 11]
    assert lsp_lines(TEXT) == ["a\r\n", "bb\r", "c\fd\n", "\n", "e"]  # the server's lines keep their ends
    assert lines_of("x\n") == ["x", ""] and line_starts("x\n") == [0, 2] and lsp_lines("x\n") == ["x\n"]
    assert lines_of("") == [""] and line_starts("") == [0] and lsp_lines("") == []


@pytest.mark.parametrize(("offset", "bounds"), [(0, (0, 1)), (1, (0, 1)), (4, (3, 5)), (8, (6, 9)), (10, (10, 10)),
                                                (12, (11, 12))])  # fmt: skip
def test_line_bounds_stop_before_the_line_end(offset, bounds):
    assert line_bounds(TEXT, offset) == bounds


@pytest.mark.parametrize("text", ["a\nb\n", "a\r\nb\r\n", "a\rb", "a\r\nb\nc", "a\rb\nc", "\r\n\r", "", "x"])
def test_one_line_end_splits_as_the_regex_does(text):
    # files with one kind of line end take str.split; mixed ones the regex: the same lines either way
    lines, ends = split_ends(text)
    assert lines == lines_of(text) == LINE_END.split(text) and ends == LINE_END.findall(text)
