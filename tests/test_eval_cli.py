"""`kvblend eval` end to end on the five-item fixture with the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

from kvblend.cli import main

FIXTURE = Path(__file__).parent / "data" / "eval_five.jsonl"
CONTRACT = ("exact_match", "edit_similarity", "agreement_with_full", "ttft_ms_p50", "ttft_ms_p95", "n")
QUALITY = ("exact_match", "edit_similarity", "identifier_match", "agreement_with_full", "first_token_agreement")


def _eval(out: Path, *extra: str) -> dict:
    argv = ["eval", "--dataset", str(FIXTURE), "--modes", "naive,blend,capsule", "--ratios", "0.15,1", "--seed", "3"]
    assert main([*argv, "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_eval_writes_the_contract_and_same_seed_gives_same_results(tmp_path, capsys):
    a = _eval(tmp_path / "a")
    printed = capsys.readouterr().out
    assert "| mode | n | exact |" in printed and "| blend_r0.15 | 5 |" in printed
    modes = a["modes"]
    assert list(modes) == ["full", "naive", "blend_r0.15", "blend_r1", "capsule"]
    for label, m in modes.items():
        assert all(k in m for k in CONTRACT), label
        assert m["n"] == 5 and 0.0 <= m["exact_match"] <= 1.0 and m["ttft_ms_p50"] <= m["ttft_ms_p95"]
    assert modes["full"]["agreement_with_full"] == 1.0 and modes["full"]["kv_paths"] == {"full": 5}
    assert modes["naive"]["kv_paths"] == {"naive": 5} and modes["naive"]["kv_bytes_loaded"] > 0
    assert modes["capsule"]["kv_paths"] == {"session": 5} and modes["capsule"]["tokens_recomputed"] == 1.0
    # Recomputing every token reproduces full prefill; the warm session holds full prefill's KV.
    assert modes["blend_r1"]["first_token_agreement"] == 1.0 and modes["capsule"]["first_token_agreement"] == 1.0
    rows = a["items"]
    assert len(rows) == 5 * 5 and {r["id"] for r in rows} == {"total-net", "discount", "new-cart", "add-two", "guard"}
    assert all(r["context"] for r in rows if r["mode"] != "capsule")  # the inline files were retrieved
    for name in ("summary.md", "quality_vs_ratio.png", "ttft_vs_context.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert "| capsule | 5 |" in (tmp_path / "a" / "summary.md").read_text()

    b = _eval(tmp_path / "b", "--no-plots")
    assert not (tmp_path / "b" / "quality_vs_ratio.png").exists()
    for label in modes:
        assert {k: b["modes"][label][k] for k in QUALITY} == {k: modes[label][k] for k in QUALITY}
    assert [(r["id"], r["mode"], r["prediction"]) for r in b["items"]] == [
        (r["id"], r["mode"], r["prediction"]) for r in rows
    ]


def test_eval_without_context_runs_full_only(tmp_path, capsys):
    data = tmp_path / "he.jsonl"
    recs = [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n", "suffix": "    return y\n",
             "canonical_solution": "    y = x + 1\n"} for i in range(2)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["eval", "--dataset", str(data), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["kind"] == "humaneval" and list(res["modes"]) == ["full"]
    assert any("no repository context" in n for n in res["notes"])
    assert "no repository context" in capsys.readouterr().out


def test_eval_errors_exit_1(tmp_path, capsys):
    assert main(["eval", "--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 1
    assert "dataset not found" in capsys.readouterr().err
    assert main(["eval", "--dataset", str(FIXTURE), "--modes", "fast", "--out", str(tmp_path / "o")]) == 1
    assert "unknown modes ['fast']" in capsys.readouterr().err
    taken = tmp_path / "a_file"
    taken.write_text("kept\n")
    assert main(["eval", "--dataset", str(FIXTURE), "--out", str(taken)]) == 1  # refused before any work
    err = capsys.readouterr().err
    assert "cannot write results to" in err and "Traceback" not in err and taken.read_text() == "kept\n"


def test_indexer_without_precompute_computes_chunks_on_first_use(tmp_path):
    from blend.loader import load_model
    from indexer import Indexer, IndexerConfig

    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    idx = Indexer(IndexerConfig(tmp_path, cache_dir=tmp_path / "c", n_commits=0, precompute=False), load_model(None))
    try:
        stats = idx.index()
        assert stats.chunks >= 1 and stats.computed == 0 and idx.computed == 0
        chunk = idx.chunks()[0]
        assert len(idx.get_kv(chunk)) == chunk.n_tokens and idx.computed == 1
        assert idx.store.contains(chunk.key)
    finally:
        idx.close()
