"""`kvblend index` and `kvblend bench index` contracts (real subprocesses)."""

import json
import subprocess
import sys

import torch

from tests.test_indexer_index import SECRETS, make_fixture_repo

torch.set_num_threads(1)


def _run(*args, timeout=300):
    env_cmd = [sys.executable, "-m", "kvblend", *args]
    return subprocess.run(env_cmd, capture_output=True, text=True, timeout=timeout)


def test_index_json_contract_and_incremental_rerun(hf_checkpoints, tmp_path):
    make_fixture_repo(tmp_path / "ws")
    ckpt = str(hf_checkpoints["llama-gqa"])
    r = _run("index", str(tmp_path / "ws"), "--model", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("files", "chunks", "tokens", "bytes", "seconds", "tokens_per_s"):
        assert out[key] > 0, key
    assert out["skipped"]["secret"] == 3 and out["skipped"]["binary"] == 2 and out["reused"] == 0
    assert not any(s in r.stdout + r.stderr for s in SECRETS)
    again = json.loads(_run("index", str(tmp_path / "ws"), "--model", ckpt, "--json").stdout)
    assert again["computed"] == 0 and again["bytes"] == out["bytes"] and again["chunks"] == out["chunks"]
    assert out["workers"] >= 1 and 0 < out["engine_seconds"] <= out["seconds"] * out["workers"]  # summed over workers
    assert again["engine_seconds"] == 0  # nothing computed again
    bad = _run("index", str(tmp_path / "missing"), "--model", ckpt, "--json")
    assert bad.returncode == 1 and "not a directory" in bad.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / ".kvblend").write_text("a file where the cache directory would go\n")
    bad = _run("index", str(tmp_path / "plain"), "--model", ckpt, "--json")
    assert bad.returncode == 1 and "Not a directory" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_index_json_contract(hf_checkpoints, tmp_path):
    make_fixture_repo(tmp_path / "ws")
    r = _run("bench", "index", "--model", str(hf_checkpoints["llama-gqa"]), str(tmp_path / "ws"), "--json",
             "--repeats", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("index_tok_s", "prefill_tok_s", "disk_load_gb_s", "plain_read_gb_s", "bytes_per_token",
                "disk_load_vs_read", "disk_load_vs_read_of_bests", "cold_disk_load_vs_read"):  # fmt: skip
        assert out[key] > 0, key
    assert len(out["index_overhead_pairs"]) == 1 and out["index_overhead"] == out["index_overhead_pairs"][0]
    assert out["index_overhead_in_run"] > 0  # walking, chunking and writing take some time
    assert out["kv_bytes_per_token"] == 2 * 3 * 2 * 16 * 2
    assert 1.0 < out["bytes_per_token_ratio"] < 1.05  # small fixture chunks: the ~120 B header weighs more
