"""`kvblend capsule ...` (in process) and the `kvblend bench capsule --json` contract (a real subprocess)."""

import json
import subprocess
import sys

import pytest
import torch

from blend.kv_cache import KVCache
from capsule import CapsuleConfig, CapsuleStore, snapshot
from kvblend.cli import main


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kvblend", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def store_dir(tmp_path):
    store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))
    ids = []
    for i, uri in enumerate(["file:///a.py", "file:///b.py"]):
        n = 10 + i
        cache = KVCache.from_tensors(torch.randn(2, 1, n, 4), torch.randn(2, 1, n, 4), torch.arange(n))
        c = snapshot(cache, list(range(n)), torch.randn(8), "f" * 32, uri=uri, doc_version=i)
        store.put(c)
        ids.append(c.id)
    return tmp_path, ids


def test_capsule_list_show_drop_verify(store_dir, capsys):
    d, (a, b) = store_dir

    def _run(*args):  # main() in this process: the same parser and handlers, without a torch import per call
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    r = _run("capsule", "list", "--dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(i["id"] for i in json.loads(r.stdout)) == sorted([a, b])
    r = _run("capsule", "show", a, "--dir", str(d), "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["uri"] == "file:///a.py" and info["n_tokens"] == 10
    assert _run("capsule", "verify", "--dir", str(d)).returncode == 0
    path = d / f"{b}.capsule"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    r = _run("capsule", "verify", "--dir", str(d), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["files"] == 2 and "checksum" in out["damaged"][path.name]
    r = _run("capsule", "drop", a, "--dir", str(d))
    assert r.returncode == 0 and not (d / f"{a}.capsule").exists()
    r = _run("capsule", "show", a, "--dir", str(d))
    assert r.returncode == 1 and f"no capsule {a}" in r.stderr
    r = _run("capsule", "list", "--dir", str(d / "missing"))
    assert r.returncode == 1 and "not a directory" in r.stderr


def test_bench_capsule_json_contract(hf_checkpoints):
    r = _run("bench", "capsule", "--model", str(hf_checkpoints["llama-gqa"]), "--contexts", "64,128",
             "--delta-tokens", "8", "--repeats", "1", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["contexts"]) == {"64", "128"}
    for row in out["contexts"].values():
        assert row["cold_ttft_ms"] > 0 and row["warm_ttft_ms"] > 0 and row["first_token_match"]
        assert row["speedup"] == pytest.approx(row["cold_ttft_ms"] / row["warm_ttft_ms"], rel=0.05, abs=0.1)
    assert out["restore_ms_memory"] > 0 and out["restore_ms_disk"] > 0
    assert out["capsule_tokens"] == 128 and out["capsule_bytes"] > out["capsule_file_bytes"] > 0
