"""Prompt windows, stop rules, suffix overlap and settings validation (no model)."""

from __future__ import annotations

import pytest

from blend.loader import DEFAULT_MODEL_DIR
from blend.prompt import QUANTUM_CHARS, fim_prompt, model_fim_order, window_end, window_start
from blend.tokenizer import Tokenizer
from kvblend.settings import Settings
from kvblend.stops import StopPlan, cut, plan_for, trim_suffix_overlap


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR)


# -- plans ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, multiline, indent",
    [
        ("x = foo(|)\n", False, 0),  # text after the cursor: fill the middle of the line
        ("def f():\n    |", True, 4),  # an indented empty line: a block
        ("def f(a):|", True, 0),  # end of a line that opens a block
        ("    total = compute(|", True, 4),  # an open parenthesis also opens a block
        ("    total = comp|", False, 4),  # end of a line with text: the rest of the line
        ("|", True, 0),  # empty document
    ],
)
def test_plan_from_cursor_position(text, multiline, indent):
    cursor = text.index("|")
    plan = plan_for(text.replace("|", ""), cursor)
    assert plan == StopPlan(multiline, indent)


def test_plan_modes_override():
    assert plan_for("x = foo(", 8, "never").multiline is False
    assert plan_for("x = foo()", 8, "always").multiline is True
    with pytest.raises(ValueError, match="multiline"):
        plan_for("x", 1, "sometimes")


def test_cut_single_line_stops_at_newline():
    assert cut("abc(d)\nnext", StopPlan(False, 0)) == ("abc(d)", True)
    assert cut("abc(d", StopPlan(False, 0)) == ("abc(d", False)


def test_cut_block_stops_at_blank_or_dedent():
    plan = StopPlan(True, 4)
    assert cut("x = 1\n    y = 2\n\n    z = 3", plan) == ("x = 1\n    y = 2", True)
    assert cut("x = 1\n    return x\ndef g():\n", plan) == ("x = 1\n    return x", True)
    assert cut("x = 1\n    if x:\n        y", plan) == ("x = 1\n    if x:\n        y", False)
    # A line still being generated is not judged yet (its indentation may grow).
    assert cut("x = 1\n  ", plan) == ("x = 1\n  ", False)
    # `else:` at the block's own indentation belongs to the enclosing statement.
    assert cut("return 1\n    else:\n", plan) == ("return 1", True)


def test_block_keywords_end_it_only_as_whole_words():
    # `exceptions`, `elsewhere`, `finally_done` are statements of the block itself, not its enclosing one's
    plan = StopPlan(True, 4)
    text = "errors = []\n    exceptions = []\n    elsewhere(errors)\n    finally_done = True\n    "
    assert cut(text, plan) == (text, False)
    assert cut("x = 1\n    except* ValueError:\n", plan) == ("x = 1", True)
    assert cut("x = 1\n    finally:\n", plan) == ("x = 1", True)


def test_trim_suffix_overlap():
    # Closing brackets that are already after the cursor are dropped...
    assert trim_suffix_overlap("a, b))", "))\n") == "a, b"
    # ...but not those closing what the completion itself opened.
    assert trim_suffix_overlap("foo(bar)", ")\n") == "foo(bar)"
    assert trim_suffix_overlap("foo(bar))", ")\n") == "foo(bar)"
    assert trim_suffix_overlap("value:", ":\n") == "value"
    # Whole lines repeating the lines after the cursor.
    assert trim_suffix_overlap("x = 1\n    return x", "\n    return x\n") == "x = 1"
    assert trim_suffix_overlap("x = 1\n    y = 2", "\n    return x\n") == "x = 1\n    y = 2"


def test_cut_ends_lines_at_crlf_and_lone_cr():
    # A CRLF line end was cut after its \r, which the editor then inserted before the line's own line end.
    assert cut("o(1)\r\ny = 2", StopPlan(False, 0)) == ("o(1)", True)
    # A lone \r is a line end too (editors and the language server split at it): not shown as one line.
    assert cut("a, b)\rnext", StopPlan(False, 0)) == ("a, b)", True)
    assert cut("o(1)\r", StopPlan(False, 0)) == ("o(1)", True)
    block = StopPlan(True, 4)
    assert cut("x = 1\r\n    return x\r\n\r\n", block) == ("x = 1\n    return x", True)
    assert cut("x = 1\r    return x\rdef g():\r", block) == ("x = 1\n    return x", True)
    assert cut("x = 1\r\n    y", block) == ("x = 1\n    y", False)  # shown lines end with \n


def test_trim_suffix_overlap_in_crlf_text():
    # Dropping the lines that repeat a CRLF suffix left the \r of the line before them.
    assert trim_suffix_overlap("x = 1\r\n    return x", "\r\n    return x\r\n") == "x = 1"
    assert trim_suffix_overlap("x = 1\n    return x", "\r    return x\r") == "x = 1"
    assert trim_suffix_overlap("a, b))", "))\r\nz = 1\r\n") == "a, b"


def test_cut_never_shows_a_cut_off_character(tok):
    # Byte-level tokens split multi-byte characters: a budget that ends inside one decodes its bytes as U+FFFD.
    ids = tok.encode("s = '日本'")
    partial = next(t for t in (tok.decode(ids[:k]) for k in range(len(ids))) if t.startswith("s = '日\ufffd"))
    assert cut(partial, StopPlan(False, 0)) == ("s = '日", False)
    assert cut("x = 1\n    y = '" + partial, StopPlan(True, 0)) == ("x = 1\n    y = 's = '日", False)
    assert cut(tok.decode(ids), StopPlan(False, 0)) == ("s = '日本'", False)


def test_line_continuation_is_completed_on_the_next_lines():
    # At the end of a line ending in a backslash a single line was always empty: the model writes a line end
    # first, and a single line is cut there.
    text = "def f(a, b):\n    total = a + \\"
    plan = plan_for(text, len(text))
    assert plan.multiline and plan.indent == 4
    assert plan == StopPlan(True, 4, continued=True)
    # the continued lines up to the first that does not go on, not the statements after them
    assert cut("\n        b\n    return total\n", plan) == ("\n        b", True)
    assert cut("\n        b + \\\n        c\n    return", plan) == ("\n        b + \\\n        c", True)
    assert cut("\n        b", plan) == ("\n        b", False)  # still being generated


def test_plan_in_a_lone_cr_document():
    text = "def f():\r    return g(\r    x = 1\r"
    assert plan_for(text, text.index("g(") + 2) == StopPlan(True, 4)  # end of its line: the ( opens a block
    assert plan_for(text, text.index("x = 1")) == StopPlan(False, 4)


# -- prompt windows ------------------------------------------------------------------------------


def test_window_start_is_quantised_and_stable_while_typing():
    text = "".join(f"line_{i} = {i}\n" for i in range(2000))
    cursor = len(text) // 2
    start = window_start(text, cursor, 3000)
    assert cursor - 3000 <= start <= cursor and text[start - 1] == "\n"
    # Typing at the cursor (inserting characters) keeps the window start until a quantum is crossed.
    typed = text[:cursor] + "abc" + text[cursor:]
    assert window_start(typed, cursor + 3, 3000) == start
    assert window_start(text, 100, 3000) == 0
    assert (window_start(text, cursor, 3000) - 1) // QUANTUM_CHARS * QUANTUM_CHARS <= start


def test_window_end_cuts_at_line_end():
    text = "a = 1\nb = 2\nc = 3\n"
    assert window_end(text, 0, 8) == 6
    assert window_end(text, 0, 100) == len(text)


def test_fim_orders(tok):
    text = "def add(a, b):\n    return a + b\n"
    cursor = text.index("a + b")
    psm = fim_prompt(tok, "m.py", text, cursor, order="psm")
    spm = fim_prompt(tok, "m.py", text, cursor, order="spm")
    assert psm.prefix == spm.prefix == text[:cursor] and psm.suffix == text[cursor:]
    assert tok.decode(psm.tokens, skip_special=False) == (
        f"<|file_sep|>m.py\n<|fim_prefix|>{text[:cursor]}<|fim_suffix|>{text[cursor:]}<|fim_middle|>"
    )
    assert tok.decode(spm.tokens, skip_special=False) == (
        f"<|file_sep|>m.py\n<|fim_suffix|>{text[cursor:]}<|fim_prefix|>{text[:cursor]}<|fim_middle|>"
    )
    # SPM: the next keystroke's prompt shares all but the last few tokens.
    typed = text[:cursor] + "a" + text[cursor:]
    nxt = fim_prompt(tok, "m.py", typed, cursor + 1, order="spm").tokens
    common = next(i for i, (a, b) in enumerate(zip(spm.tokens, nxt, strict=False)) if a != b)
    assert common >= len(spm.tokens) - 3


def test_fim_prompt_budgets_and_special_strings(tok):
    text = "x = 1\n" * 2000 + "y = '<|fim_middle|>'\n"
    p = fim_prompt(tok, "m.py", text, len(text), prefix_tokens=64, suffix_tokens=8, order="psm")
    body = p.tokens[p.tokens.index(tok.token_id("<|fim_prefix|>")) + 1 : p.tokens.index(tok.token_id("<|fim_suffix|>"))]
    assert len(body) <= 64
    # A special-token string typed into the file is text, not a control token.
    assert p.tokens.count(tok.token_id("<|fim_middle|>")) == 1
    with pytest.raises(ValueError, match="FIM order"):
        fim_prompt(tok, "m.py", text, 0, order="mps")
    with pytest.raises(ValueError, match="cursor"):
        fim_prompt(tok, "m.py", "abc", 4)


def test_model_fim_order(tmp_path):
    assert model_fim_order(DEFAULT_MODEL_DIR) == "spm"
    assert model_fim_order(tmp_path) == "psm"
    (tmp_path / "kvblend.json").write_text("{not json")
    assert model_fim_order(tmp_path) == "psm"


# -- settings ------------------------------------------------------------------------------------


def test_settings_from_options_validates_each_value():
    s, warnings = Settings.from_options(
        {"recomputeRatio": 0.3, "maxTokens": 0, "mode": "naive", "fimOrder": 3, "colour": "red", "model": "/m"}
    )
    assert s.recompute_ratio == 0.3 and s.mode == "naive"
    assert s.max_tokens == Settings().max_tokens and s.fim_order == "auto"
    assert len(warnings) == 3
    assert any("max_tokens" in w for w in warnings) and any("fim_order" in w for w in warnings)
    assert any("colour" in w for w in warnings)
    # VS Code nests the section under its name; bools are not ints.
    s2, w2 = Settings.from_options({"kvblend": {"debounceMs": True, "sessionReuse": False}}, base=s)
    assert s2.session_reuse is False and s2.debounce_ms == s.debounce_ms and s2.mode == "naive" and len(w2) == 1
    assert Settings.from_options("nonsense")[1] == ["settings must be an object, got str: ignored"]
    with pytest.raises(ValueError, match="recompute_ratio"):
        Settings(recompute_ratio=2.0)
