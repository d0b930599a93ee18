r"""Results shown to the user, kept to answer a repeated request or a typed-through one without the model.

Typed-through: the user typed the first characters of a suggestion shown at an earlier cursor (the text
typed since equals its start, and the text around it is unchanged): the rest of the suggestion answers.

A suggestion ends its lines with \n (`kvblend.stops`); the editor writes the document's own line end when the
user presses Enter or accepts it, so in a CRLF (or old Mac, lone \r) document the text typed through holds
\r\n where the suggestion holds \n: it is compared with its line ends as \n.
"""

from __future__ import annotations

import collections
import dataclasses
import re

WINDOW = 256  # characters before and after the cursor that must be unchanged for a hit
_LINE_END = re.compile(r"\r\n?")  # a document's \r\n or lone \r: the \n of a suggestion


@dataclasses.dataclass(frozen=True)
class Shown:
    path: str
    offset: int  # cursor offset
    before: str  # up to WINDOW characters before the cursor
    after: str  # up to WINDOW characters after it
    text: str  # the suggestion


class ShownCache:
    def __init__(self, size: int) -> None:
        self._items: collections.deque[Shown] = collections.deque(maxlen=max(size, 1))

    def remember(self, path: str, text: str, cursor: int, suggestion: str) -> None:
        before, after = text[max(0, cursor - WINDOW) : cursor], text[cursor : cursor + WINDOW]
        self._items.append(Shown(path, cursor, before, after, suggestion))

    def lookup(self, path: str, text: str, cursor: int) -> tuple[str, int] | None:
        """(the rest of a shown suggestion, characters of it typed since) for this cursor, or None."""
        after = text[cursor : cursor + WINDOW]
        for e in reversed(self._items):
            span = cursor - e.offset  # document characters typed: up to two per suggestion character (\r\n)
            if e.path != path or not 0 <= span < 2 * len(e.text) or after != e.after:
                continue
            if text[max(0, e.offset - WINDOW) : e.offset] != e.before:
                continue
            typed = text[e.offset : cursor]
            if "\r" in typed:
                typed = _LINE_END.sub("\n", typed)
            if len(typed) < len(e.text) and e.text.startswith(typed):
                return e.text[len(typed) :], len(typed)
        return None
