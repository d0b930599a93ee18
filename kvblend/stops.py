"""When a completion ends and what of it is shown: single line or block, dedent, blank line, suffix overlap.

The decision is made from the cursor's syntactic position (the text of its line around it):
- text after the cursor on its line -> a single line (filling the middle of a line);
- the line before the cursor is empty or only indentation, or the previous line opens a block (`:`, `{`,
  `(`, `[` at its end) and the cursor is at the end of its line -> a block;
- otherwise (typing at the end of a line with text) -> the rest of that line.
A block stops at the first blank line or at a line indented less than the block's first line.
"""

from __future__ import annotations

import dataclasses

MODES = ("auto", "always", "never")  # multi-line: decided per cursor, always blocks, never (single lines)
_OPENERS = (":", "{", "(", "[", "=>", "->")


@dataclasses.dataclass(frozen=True)
class StopPlan:
    multiline: bool
    indent: int  # columns of indentation a block may not go below (the cursor line's)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def plan_for(text: str, cursor: int, mode: str = "auto") -> StopPlan:
    """How to stop a completion at character offset `cursor` of `text`."""
    if mode not in MODES:
        raise ValueError(f"unknown multiline mode {mode!r} (expected one of {MODES})")
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = text.find("\n", cursor)
    line_end = len(text) if line_end < 0 else line_end
    before, after = text[line_start:cursor], text[cursor:line_end]
    indent = indent_of(before) if before.strip() else len(before)
    if mode != "auto":
        return StopPlan(mode == "always", indent)
    if after.strip():
        return StopPlan(False, indent)
    if not before.strip():
        return StopPlan(True, indent)
    prev = before.rstrip()
    return StopPlan(prev.endswith(_OPENERS), indent)


def cut(text: str, plan: StopPlan) -> tuple[str, bool]:
    """The part of generated `text` to show, and whether a stop rule ended it (so decoding can stop)."""
    if not plan.multiline:
        nl = text.find("\n")
        return (text, False) if nl < 0 else (text[:nl], True)
    lines = text.split("\n")
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
    return text, False


def _closes(line: str) -> bool:
    """A line at the block's own indentation that starts a new statement of the enclosing block."""
    return line.lstrip().startswith(("else", "elif", "except", "finally", ")", "]", "}"))


def trim_suffix_overlap(completion: str, suffix: str) -> str:
    """Drop generated text that repeats what already follows the cursor.

    - The rest of the cursor line: a completion that ends with the same characters the line already has
      after the cursor (typically closing brackets) loses them.
    - Whole lines: trailing completion lines equal to the first lines after the cursor are dropped.
    """
    line_after = suffix.split("\n", 1)[0]
    if line_after.strip() and "\n" not in completion:
        for n in range(min(len(line_after), len(completion)), 0, -1):
            seg = line_after[:n]
            if seg.strip() and completion.endswith(seg) and _repeats(completion, seg):
                return completion[:-n]
        return completion
    comp_lines = completion.split("\n")
    suf_lines = [ln for ln in suffix.split("\n") if ln.strip()]
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
