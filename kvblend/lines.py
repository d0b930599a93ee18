r"""Lines as the language server counts them: ended by \r\n, \r or \n only.

`str.splitlines` also splits at \f, \v, \x1c-\x1e, \x85, \u2028 and \u2029, which LSP positions do not count (a
form feed between sections would put every later line one off); `split("\n")` alone misses CRLF's \r and old
Mac files' lone \r. The server's documents, the CLI's --line/--col, the stop rules and the eval's holes all count
lines this one way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

LINE_END = re.compile(r"\r\n|\r|\n")


def lines_of(text: str) -> list[str]:
    r"""The lines of `text` without their ends: "a\r\nb\rc\n" -> ["a", "b", "c", ""]."""
    end = _uniform_end(text)
    return text.split(end) if end is not None else LINE_END.split(text)


def split_ends(text: str) -> tuple[list[str], list[str]]:
    """`lines_of(text)` and the line end after each line but the last."""
    end = _uniform_end(text)
    if end is None:
        return LINE_END.split(text), LINE_END.findall(text)
    lines = text.split(end)
    return lines, [end] * (len(lines) - 1)


def _uniform_end(text: str) -> str | None:
    r"""The one line end `text` uses (\n, \r\n or \r), or None when it mixes them. Files nearly always use one,
    and `str.split` on it is ~5x faster than the regex (the server splits whole documents at every keystroke)."""
    if "\r" not in text:
        return "\n"
    if "\n" not in text:
        return "\r"
    n = text.count("\r\n")
    return "\r\n" if n == text.count("\r") == text.count("\n") else None


def iter_lines(text: str) -> Iterator[str]:
    """`lines_of(text)`, one at a time (the rest of a large document is read only as far as needed)."""
    start = 0
    for m in LINE_END.finditer(text):
        yield text[start : m.start()]
        start = m.end()
    yield text[start:]


def line_starts(text: str) -> list[int]:
    """The offset where each line of `text` starts (a text ending in a line end has an empty last line)."""
    return [0] + [m.end() for m in LINE_END.finditer(text)]


def line_bounds(text: str, offset: int) -> tuple[int, int]:
    """(start, end) of the line holding `offset`: end is where its text stops, before its line end."""
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    end = LINE_END.search(text, offset)
    return start, len(text) if end is None else end.start()
