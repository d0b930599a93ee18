"""gitignore-style glob -> regular expression, shared by the indexer's ignore rules and the ledger's path
globs (torch-free)."""

from __future__ import annotations

import re


def glob_to_regex(pat: str) -> str:
    """The regex body of one gitignore glob: `*` and `?` stay within a path segment, `**` as a whole segment
    (`**/x`, `a/**/b`, `a/**`) spans segments (elsewhere it is a plain `*`), `[...]` classes (`!` negates;
    never `/`), backslash escapes."""
    out, i = [], 0
    while i < len(pat):
        c = pat[i]
        if c == "*":
            j = len(pat) - len(pat[i:].lstrip("*"))  # the end of this run of stars
            whole = j - i >= 2 and (i == 0 or pat[i - 1] == "/") and (j == len(pat) or pat[j] == "/")
            if not whole:  # gitignore: `a**b`, `**.py` are plain `*`: they stay within one segment
                out.append("[^/]*")
                i = j
            elif j < len(pat):  # `**/`: zero or more directories
                out.append("(?:.*/)?")
                i = j + 1
            else:  # a trailing `/**`: everything below
                out.append(".*")
                i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pat.find("]", i + 2 if pat[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pat[i + 1 : j].replace("\\", "\\\\")
            # a class never matches the `/` between segments (gitignore), not even a negated one
            out.append("(?!/)[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        elif c == "\\" and i + 1 < len(pat):
            out.append(re.escape(pat[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)
