"""The `kvblend` command line contract (run as a real subprocess)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from blend.generate import generate
from blend.loader import load_model


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kvblend", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_prints_only_the_greedy_continuation(hf_checkpoints, tmp_path):
    ckpt = hf_checkpoints["llama-gqa"]
    prompt = "def add(a, b):\n    return"
    (tmp_path / "p.txt").write_text(prompt)
    r = _run("generate", "--model", str(ckpt), "--prompt-file", str(tmp_path / "p.txt"), "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    lm = load_model(ckpt, device="cpu")
    expected = generate(lm.model, lm.tokenizer.encode(prompt), 12, eos_ids=lm.tokenizer.eos_ids).tokens
    # a random-weight model's bytes: a character cut off by --max-tokens is not printed as U+FFFD
    assert r.stdout == lm.tokenizer.decode(expected).rstrip("\ufffd")
    assert len(expected) > 0


def test_generate_errors_are_clear(hf_checkpoints, tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    r = _run("generate", "--model", str(hf_checkpoints["qwen2"]), "--prompt-file", str(tmp_path / "bin.txt"))
    assert r.returncode == 1 and "not UTF-8" in r.stderr
    (tmp_path / "ok.txt").write_text("x = 1")
    r = _run("generate", "--model", str(tmp_path / "missing"), "--prompt-file", str(tmp_path / "ok.txt"))
    assert r.returncode == 1 and "model directory not found" in r.stderr
    assert r.stdout == ""
    ckpt = str(hf_checkpoints["qwen2"])
    for bad, message in ((["--max-tokens", "0"], "--max-tokens must be at least 1"),
                         (["--temperature", "nan"], "temperature must be a finite number"),
                         (["--seed", str(1 << 70)], "seed must be in"),
                         (["--max-tokens", "100000"], "exceeds the model's context window")):  # fmt: skip
        r = _run("generate", "--model", ckpt, "--prompt-file", str(tmp_path / "ok.txt"), *bad)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_generate_fits_a_prompt_that_ends_at_the_window(hf_checkpoints, tmp_path):
    """The last generated token is never fed back: a prompt of P tokens leaves room for window - P + 1 new ones
    (the check asked for one position more than generation uses)."""
    import json

    from blend.tokenizer import Tokenizer

    ckpt = hf_checkpoints["qwen2"]
    window = json.loads((ckpt / "config.json").read_text())["max_position_embeddings"]
    (tmp_path / "p.txt").write_text("def f(x):\n    return x + 1\n")
    n = len(Tokenizer.from_dir(ckpt).encode((tmp_path / "p.txt").read_text()))
    args = ("generate", "--model", str(ckpt), "--prompt-file", str(tmp_path / "p.txt"), "--max-tokens")
    r = _run(*args, str(window - n + 1))
    assert r.returncode == 0, r.stderr
    r = _run(*args, str(window - n + 2))
    assert r.returncode == 1 and "exceeds the model's context window" in r.stderr


def test_eval_needs_a_dataset_and_an_out_dir():
    r = _run("eval")
    assert r.returncode == 2 and "--dataset" in r.stderr and "--out" in r.stderr


def test_main_runs_the_tokenizer_on_one_thread_unless_the_user_chose(monkeypatch, tmp_path):
    from kvblend.cli import main

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    assert main(["index", str(tmp_path / "missing")]) == 1  # any command
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    main(["index", str(tmp_path / "missing")])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_bench_engine_json_contract(hf_checkpoints):
    r = _run("bench", "engine", "--model", str(hf_checkpoints["llama-gqa"]), "--prompt-tokens", "64",
             "--decode-tokens", "4", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("prefill_tok_s", "decode_ms_per_tok", "hf_prefill_tok_s", "hf_decode_ms_per_tok"):
        assert out[key] > 0
    assert out["prefill_speedup"] == pytest.approx(out["prefill_tok_s"] / out["hf_prefill_tok_s"], rel=0.01)


def test_generate_stops_on_eos(hf_checkpoints):
    lm = load_model(hf_checkpoints["llama-gqa"], device="cpu")
    prompt = [5, 6, 7]
    first = generate(lm.model, prompt, 1).tokens[0]
    out = generate(lm.model, prompt, 10, eos_ids=(first,))
    assert out.tokens == [] and out.stop_reason == "eos"
    assert generate(lm.model, prompt, 3).stop_reason == "max_tokens"
    assert torch.is_tensor(lm.model.inv_freq)


def test_bench_blend_json_contract(hf_checkpoints):
    r = _run("bench", "blend", "--model", str(hf_checkpoints["llama-gqa"]), "--chunks", "2", "--chunk-tokens", "32",
             "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1", "--samples", "1", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["context_tokens"] > 64 and out["prompt_tokens"] == 8
    for mode in ("full", "naive", "prefix", "blend_r0.05", "blend_r0.15", "blend_r0.3"):
        row = out[mode]
        assert row["ttft_ms"] > 0 and 0 <= row["top1_agreement"] <= 1 and row["first_token_kl"] >= -1e-6
    assert out["full"]["top1_agreement"] == 1.0 and out["full"]["first_token_kl"] == 0.0
