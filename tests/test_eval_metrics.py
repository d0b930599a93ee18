"""`kvblend eval` metrics against values computed by hand on the five-item fixture, and dataset reading."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kvblend.eval import metrics
from kvblend.eval.config import EvalConfig
from kvblend.eval.datasets import DatasetError, load_dataset, read_jsonl, select
from kvblend.eval.report import aggregate

FIXTURE = Path(__file__).parent / "data" / "eval_five.jsonl"

# Fixed predictions for the five fixture items, and what each metric must give, worked out by hand:
PREDICTIONS = {
    # Same text plus trailing spaces and a newline: normalization drops them. exact 1, edit sim 1, F1 1.
    "total-net": "return sum(net_price(p, VAT_RATE) for p in items)  \n",
    # "...10)" -> "...5)": substitute 1->5, delete 0 = 2 edits; the reference has 29 characters:
    # edit sim 1 - 2/29 = 27/29. Identifiers {x, apply_discount, total} on both sides: F1 1.
    "discount": "x = apply_discount(total, 5)",
    # Nothing predicted: 18 deletions of 18 characters, edit sim 0; no identifiers vs {Cart, items}: F1 0.
    "new-cart": "",
    # ", qty=2" missing: 7 deletions of 21 characters, edit sim 1 - 7/21 = 2/3. Identifiers {cart, add, item}
    # vs {cart, add, item, qty}: precision 3/3, recall 3/4, F1 2 * 1 * 3/4 / (7/4) = 6/7.
    "add-two": "cart.add(item)",
    # Two lines, trailing newline dropped by normalization, "0" -> "1": 1 edit of 30 characters ("if x is
    # None:" 13 + newline 1 + 8 spaces + "return 0" 8), edit sim 29/30. Keywords (if, is, None, return) do not
    # count: {x} on both sides, F1 1.
    "guard": "if x is None:\n        return 1\n",
}
EXPECTED = {  # id: (exact_match, edit_similarity, identifier_match)
    "total-net": (1.0, 1.0, 1.0),
    "discount": (0.0, 27 / 29, 1.0),
    "new-cart": (0.0, 0.0, 0.0),
    "add-two": (0.0, 2 / 3, 6 / 7),
    "guard": (0.0, 29 / 30, 1.0),
}


def test_metrics_on_the_fixture_match_hand_computed_values():
    kind, items = read_jsonl(FIXTURE)
    assert kind == "own" and [it.id for it in items] == list(EXPECTED)
    for it in items:
        pred = PREDICTIONS[it.id]
        em, es, im = EXPECTED[it.id]
        assert metrics.exact_match(pred, it.middle) == em, it.id
        assert metrics.edit_similarity(pred, it.middle) == pytest.approx(es, abs=1e-12), it.id
        assert metrics.identifier_match(pred, it.middle) == pytest.approx(im, abs=1e-12), it.id


def test_aggregate_means_and_percentiles():
    _, items = read_jsonl(FIXTURE)
    spec = EvalConfig(Path("."), Path("."), modes=("full",)).specs(True)[0]
    ttft = [10.0, 20.0, 30.0, 40.0, 50.0]
    records = [
        {"mode": "full", "exact_match": metrics.exact_match(PREDICTIONS[it.id], it.middle),
         "edit_similarity": metrics.edit_similarity(PREDICTIONS[it.id], it.middle),
         "identifier_match": metrics.identifier_match(PREDICTIONS[it.id], it.middle), "agree_output": 1.0,
         "agree_first_token": 1.0, "ttft_ms": t, "total_ms": 2 * t, "tokens_recomputed": 100, "prompt_tokens": 100,
         "kv_bytes_loaded": 0, "kv_path": "full"}
        for it, t in zip(items, ttft, strict=True)
    ]  # fmt: skip
    m = aggregate(records, [spec])["full"]
    assert m["n"] == 5
    assert m["exact_match"] == 0.2  # 1 of 5
    assert m["edit_similarity"] == round((1 + 27 / 29 + 0 + 2 / 3 + 29 / 30) / 5, 4) == 0.7129
    assert m["identifier_match"] == round((1 + 1 + 0 + 6 / 7 + 1) / 5, 4) == 0.7714  # 27/35
    # Linear interpolation between order statistics: p50 of 10..50 is 30, p95 is 40 + 0.8 * 10 = 48.
    assert (m["ttft_ms_p50"], m["ttft_ms_p95"], m["total_ms_p95"]) == (30.0, 48.0, 96.0)


def test_levenshtein_and_edge_cases():
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.levenshtein("", "abc") == metrics.levenshtein("abc", "") == 3
    assert metrics.edit_similarity("", "  \n") == 1.0  # both empty after normalization
    assert metrics.identifier_match("1 + 2", "(3)") == 1.0  # no identifiers on either side
    assert metrics.identifiers("for x_1 in range(n): pass") == {"x_1", "range", "n"}
    assert metrics.normalize("  a  \n  b \n\n") == "a\n  b"  # lines right-stripped, then the whole stripped


def test_humaneval_format_is_detected(tmp_path):
    rec = {"task_id": "SingleLineInfilling/HumanEval/0/L3", "entry_point": "f", "prompt": "def f(x):\n",
           "suffix": "    return y\n", "canonical_solution": "    y = x + 1\n", "test": ""}  # fmt: skip
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(rec) + "\n")
    kind, items = load_dataset(path)
    assert kind == "humaneval" and len(items) == 1
    it = items[0]
    assert (it.path, it.text, it.cursor) == ("SingleLineInfilling_HumanEval_0_L3.py", "def f(x):\n    return y\n", 10)
    assert it.middle == "    y = x + 1\n" and not it.multiline and it.context_key() is None


def test_dataset_errors_name_the_line_and_value(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prefix": "x", "suffix": "", "middle": 3}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: field 'middle' must be a string, got 3"):
        read_jsonl(bad)
    bad.write_text('{"id": "a", "prefix": "", "suffix": "", "middle": ""}\n{"what": 1}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2: field 'id' must be a string"):
        read_jsonl(bad)
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(DatasetError, match=r"unknown record with fields \['foo'\]"):
        read_jsonl(bad)
    with pytest.raises(DatasetError, match="dataset not found"):
        load_dataset(tmp_path / "missing.jsonl")


def test_select_is_seeded_and_limit_takes_a_prefix():
    _, items = read_jsonl(FIXTURE)
    a, b = select(items, 7, None), select(list(reversed(items)), 7, None)
    assert [x.id for x in a] == [x.id for x in b]  # input order does not matter
    assert [x.id for x in select(items, 7, 3)] == [x.id for x in a[:3]]
    orders = {tuple(x.id for x in select(items, s, None)) for s in range(6)}
    assert len(orders) > 1  # the seed changes the draw
