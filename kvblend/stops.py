r"""When a completion ends and what of it is shown: single line or block, dedent, blank line, suffix overlap.

The decision is made from the cursor's syntactic position (the text of its line around it):
- text after the cursor on its line -> a single line (filling the middle of a line);
- the line before the cursor is empty or only indentation, or the previous line opens a block (`:`, `{`,
  `(`, `[` at its end) and the cursor is at the end of its line -> a block;
- the line before the cursor ends in a backslash (a continuation) -> the lines that continue it;
- otherwise (typing at the end of a line with text) -> the rest of that line.
A block stops at the first blank line or at a line indented less than the block's first line.

Lines end at \r\n, \r or \n, as the language server counts them (documents and models use all three); the text
shown ends its lines with \n, which every client splits at (VS Code then writes the document's own line end).
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from kvblend.lines import iter_lines, line_bounds, lines_of

MODES = ("auto", "always", "never")  # multi-line: decided per cursor, always blocks, never (single lines)
_OPENERS = (":", "{", "(", "[", "=>", "->")
_CLOSER = re.compile(r"(?:else|elif|except|finally)\b|[)\]}]")


@dataclasses.dataclass(frozen=True)
class StopPlan:
    multiline: bool
    indent: int  # columns of indentation a block may not go below (the cursor line's)
    # The cursor line ends in a backslash: the completion is the lines that continue the statement, up to the
    # first that does not end in one (as a single line it would always be empty: the model writes a line end
    # first, where a single line is cut).
    continued: bool = False


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def plan_for(text: str, cursor: int, mode: str = "auto") -> StopPlan:
    """How to stop a completion at character offset `cursor` of `text`."""
    if mode not in MODES:
        raise ValueError(f"unknown multiline mode {mode!r} (expected one of {MODES})")
    line_start, line_end = line_bounds(text, cursor)
    before, after = text[line_start:cursor], text[cursor:line_end]
    indent = indent_of(before) if before.strip() else len(before)
    if mode != "auto":
        return StopPlan(mode == "always", indent)
    if after.strip():
        return StopPlan(False, indent)
    if not before.strip():
        return StopPlan(True, indent)
    prev = before.rstrip()
    if prev.endswith("\\"):
        return StopPlan(True, indent, continued=True)
    return StopPlan(prev.endswith(_OPENERS), indent)


def cut(text: str, plan: StopPlan) -> tuple[str, bool]:
    """The part of generated `text` to show, and whether a stop rule ended it (so decoding can stop)."""
    lines = lines_of(text)
    if not plan.multiline:
        return (whole_chars(text), False) if len(lines) == 1 else (lines[0], True)
    # lines[0] continues the cursor line; a block ends before a blank or a dedented line.
    for i in range(1, len(lines)):
        line = lines[i]
        complete = i < len(lines) - 1  # the last piece may still grow
        if not line.strip():
            if complete:
                return "\n".join(lines[:i]), True
            continue
        if indent_of(line) < plan.indent or (complete and indent_of(line) == plan.indent and _closes(line)):
            return "\n".join(lines[:i]), True
        if plan.continued and complete and not line.rstrip().endswith("\\"):
            return "\n".join(lines[: i + 1]), True
    return whole_chars("\n".join(lines)), False


def whole_chars(text: str) -> str:
    """`text` without the U+FFFD that ends it: byte-level tokens split multi-byte characters, and a decode
    that stops inside one (a token budget, a time budget) shows its first bytes as U+FFFD."""
    return text.rstrip("\ufffd")


def _closes(line: str) -> bool:
    """A line at the block's own indentation that starts a new statement of the enclosing block (keywords as
    whole words: `exceptions = []` or `elsewhere()` is the block's own next statement)."""
    return _CLOSER.match(line.lstrip()) is not None


def trim_suffix_overlap(completion: str, suffix: str) -> str:
    """Drop generated text that repeats what already follows the cursor.

    - The rest of the cursor line: a completion that ends with the same characters the line already has
      after the cursor (typically closing brackets) loses them.
    - Whole lines: trailing completion lines equal to the first lines after the cursor are dropped.
    """
    comp_lines = lines_of(completion)
    line_after = next(iter_lines(suffix))
    if line_after.strip() and len(comp_lines) == 1:
        for n in range(min(len(line_after), len(completion)), 0, -1):
            seg = line_after[:n]
            if seg.strip() and completion.endswith(seg) and _repeats(completion, seg):
                return completion[:-n]
        return completion
    # the suffix may be the rest of a 5 MB document: read only as many lines as can repeat
    suf_lines = list(itertools.islice((ln for ln in iter_lines(suffix) if ln.strip()), len(comp_lines) - 1))
    if not suf_lines or len(comp_lines) < 2:
        return completion
    for n in range(min(len(comp_lines) - 1, len(suf_lines)), 0, -1):
        if [ln.rstrip() for ln in comp_lines[-n:]] == [ln.rstrip() for ln in suf_lines[:n]]:
            return "\n".join(comp_lines[:-n])
    return completion


def _repeats(completion: str, seg: str) -> bool:
    """Whether the `seg` ending `completion` repeats the text after the cursor rather than closing brackets
    the completion itself opened: closers count as repeats only while the completion has more of them than
    openers."""
    closers = sum(seg.count(c) for c in ")]}")
    if not closers:
        return True
    excess = sum(completion.count(c) for c in ")]}") - sum(completion.count(c) for c in "([{")
    return excess >= closers
