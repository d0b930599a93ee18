"""Prompt formats: the repository header and the local fill-in-the-middle prompt around a cursor.

A blended context is `<|repo_name|>name\\n` + chunks (each `<|file_sep|>path\\n...`) + the local prompt:

    PSM: <|file_sep|>path\\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
    SPM: <|file_sep|>path\\n<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>

SPM puts the text being typed last, so consecutive keystrokes share all but the last few tokens of the
prompt and a session only prefills those; PSM re-prefills the suffix after every keystroke. The windows
around the cursor are cut at line boundaries and their start is quantised (`window_start`), so the prompt
of the next keystroke begins with the same tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from blend.tokenizer import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME, Tokenizer

log = logging.getLogger(__name__)

FIM_ORDERS = ("psm", "spm")
CHARS_PER_TOKEN = 3  # a generous bound for code in BPE: char windows rarely exceed their token budgets
QUANTUM_CHARS = 2048  # window starts move in steps of this many characters (cache-friendly prompts)


@dataclasses.dataclass(frozen=True)
class FimPrompt:
    tokens: list[int]
    prefix: str  # the window of text before the cursor that the prompt holds
    suffix: str  # the window after the cursor
    order: str


def repo_header(name: str) -> str:
    return f"{REPO_NAME}{name}\n"


def window_start(text: str, cursor: int, max_chars: int) -> int:
    """Start of the prefix window: at most `max_chars` before the cursor, quantised, at a line start."""
    if cursor <= max_chars:
        return 0
    start = -(-(cursor - max_chars) // QUANTUM_CHARS) * QUANTUM_CHARS  # rounded up: never over the budget
    nl = text.find("\n", start, cursor)
    return nl + 1 if nl >= 0 else start


def window_end(text: str, cursor: int, max_chars: int) -> int:
    """End of the suffix window: at most `max_chars` after the cursor, at a line end when there is one."""
    end = min(len(text), cursor + max_chars)
    if end == len(text):
        return end
    nl = text.rfind("\n", cursor, end)
    return nl + 1 if nl >= 0 else end


def window(text: str, cursor: int, prefix_tokens: int, suffix_tokens: int) -> tuple[int, int]:
    """[start, end): the characters of `text` around `cursor` that the local prompt may hold."""
    return (
        window_start(text, cursor, prefix_tokens * CHARS_PER_TOKEN),
        window_end(text, cursor, suffix_tokens * CHARS_PER_TOKEN),
    )


def fim_prompt(
    tok: Tokenizer,
    path: str,
    text: str,
    cursor: int,
    prefix_tokens: int = 1024,
    suffix_tokens: int = 256,
    order: str = "spm",
) -> FimPrompt:
    """The local prompt for a cursor at character offset `cursor` of `text` (the file at `path`)."""
    if order not in FIM_ORDERS:
        raise ValueError(f"unknown FIM order {order!r} (expected one of {FIM_ORDERS})")
    if not 0 <= cursor <= len(text):
        raise ValueError(f"cursor {cursor} outside the text (length {len(text)})")
    start, end = window(text, cursor, prefix_tokens, suffix_tokens)
    prefix, suffix = text[start:cursor], text[cursor:end]
    head = tok.encode(f"{FILE_SEP}{path}\n")
    pre = _special_free(tok, prefix)[-prefix_tokens:] if prefix_tokens > 0 else []
    suf = _special_free(tok, suffix)[:suffix_tokens] if suffix_tokens > 0 else []
    fp, fs, fm = (_special_id(tok, t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    if order == "psm":
        ids = head + [fp] + pre + [fs] + suf + [fm]
    else:
        ids = head + [fs] + suf + [fp] + pre + [fm]
    return FimPrompt(ids, prefix, suffix, order)


def _special_free(tok: Tokenizer, text: str) -> list[int]:
    """Tokens of user text; special-token strings typed into a file must not act as control tokens."""
    ids = tok.encode(text)
    if not _special_ids(tok).intersection(ids):
        return ids
    # Encode "<" apart from "|...": no special token can form across the cut.
    first, *rest = text.split("<|")
    out = tok.encode(first)
    for piece in rest:
        out += tok.encode("<") + tok.encode("|" + piece)
    return out


def _special_ids(tok: Tokenizer) -> set[int]:
    ids = (tok.token_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP, REPO_NAME))
    return {i for i in ids if i is not None} | set(tok.eos_ids)


def _special_id(tok: Tokenizer, token: str) -> int:
    i = tok.token_id(token)
    if i is None:
        raise ValueError(f"the tokenizer has no {token} token: this model cannot fill in the middle")
    return i


def model_fim_order(model_dir: Path | None) -> str:
    """The FIM order a checkpoint prefers: `kvblend.json` {"fim_orders": [...]} lists the orders it was
    trained on (the bundled model: both, SPM preferred); checkpoints without it get PSM, the common one.
    A malformed file gets PSM too, with one warning per file and problem."""
    if model_dir is None:
        return "psm"
    meta = Path(model_dir) / "kvblend.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "psm"
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        problem = f"cannot read it ({e})"
    else:
        orders = data.get("fim_orders", []) if isinstance(data, dict) else None
        if isinstance(orders, list) and all(isinstance(o, str) for o in orders):
            return "spm" if "spm" in orders else "psm"
        problem = f'"fim_orders" must be a list of FIM orders {FIM_ORDERS}, got {orders!r:.80}'
        if not isinstance(data, dict):
            problem = f"it must hold a JSON object, got {data!r:.80}"
    warned = model_fim_order.__dict__.setdefault("warned", set())  # (file, problem) pairs already logged
    if (str(meta), problem) not in warned:
        warned.add((str(meta), problem))
        log.warning("ignoring %s: %s; using the default FIM order psm", meta, problem)
    return "psm"
