"""The vLLM path's pieces that need no vLLM: the hand-off files and bench_vllm's argument checks."""

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from kvblend.bench_vllm import VllmBenchConfig
from kvblend.kv_handoff import HandoffKey, KVHandoff


def _kv(n_tokens, n_layers=2):
    g = torch.Generator().manual_seed(n_tokens)
    return torch.randn(n_layers, 3, n_tokens, 4, generator=g), torch.randn(n_layers, 3, n_tokens, 4, generator=g)


@pytest.mark.parametrize("on_disk", [False, True])
def test_two_puts_of_one_prompt_do_not_drop_each_other(tmp_path, on_disk):
    """Two requests for the same prompt at once (or two engines on one directory): the first to finish used to
    drop the KV the other's vLLM request was about to load."""
    store = KVHandoff(tmp_path if on_disk else None)
    tokens = [11, 12, 13, 14]
    first = store.put(tokens, *_kv(4))
    k2, v2 = _kv(4, n_layers=2)
    second = store.put(tokens, k2 + 1, v2 + 1)
    assert first != second and first.matches(tokens) and second.matches(tokens)
    store.drop(first)
    got = store.get(second)
    assert got is not None and torch.equal(got[0], k2 + 1) and torch.equal(got[1], v2 + 1)
    assert HandoffKey.from_str(second.to_str()) == second
    store.drop(second)


@pytest.mark.parametrize("bad", ["tokens", "layers_kv", "dims"])
def test_a_foreign_file_under_a_key_is_a_miss(tmp_path, bad):
    """A readable safetensors file whose tensors are not the KV of the key's tokens (another writer, an old
    format, a truncated prompt) was handed to the connector as is, which sliced or wrote the wrong KV."""
    store = KVHandoff(tmp_path)
    key = store.put([1, 2, 3, 4, 5], *_kv(5))
    k, v = _kv(5)
    tensors = {"tokens": {"k": k[:, :, :3], "v": v[:, :, :3]},
               "layers_kv": {"k": k, "v": v[:1]},
               "dims": {"k": k[0], "v": v[0]}}[bad]  # fmt: skip
    save_file({n: t.contiguous() for n, t in tensors.items()}, tmp_path / f"{key.to_str()}.safetensors")
    assert store.get(key) is None


def test_files_left_by_a_dead_engine_are_swept(tmp_path):
    """An engine killed between `put` and `drop` left its hand-off file (and a half-written temporary file)
    in the directory forever; a new store on that directory removes old ones, and nothing else."""
    store = KVHandoff(tmp_path)
    old = store.put([1, 2, 3], *_kv(3))
    fresh = store.put([4, 5, 6], *_kv(3))
    tmp = tmp_path / f".{old.to_str()}.abc123.tmp"
    tmp.write_bytes(b"half")
    other = tmp_path / "notes.safetensors"
    other.write_bytes(b"not ours")
    hour_ago = time.time() - 3600
    for p in (tmp_path / f"{old.to_str()}.safetensors", tmp, other):
        os.utime(p, (hour_ago, hour_ago))
    KVHandoff(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{fresh.to_str()}.safetensors", other.name])
    assert store.get(fresh) is not None and store.get(old) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"repeats": 0}, "repeats"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"check_tokens": 0}, "check_tokens"),
        ({"contexts": ()}, "at least one context"),
    ],
)
def test_bench_vllm_config_refuses_what_would_fail_after_vllm_started(kwargs, match):
    """These used to pass the config and fail minutes later (min() of no timings, an empty prompt, max() of no
    contexts) after the model had loaded and vLLM had started, or silently ran a meaningless ratio."""
    with pytest.raises(ValueError, match=match):
        VllmBenchConfig(**kwargs)


def test_bench_vllm_cli_refuses_bad_arguments_before_loading(capsys):
    from kvblend import cli

    assert cli.main(["bench", "vllm", "--repeats", "0", "--model", "/nonexistent/model"]) == 1
    err = capsys.readouterr().err
    assert "repeats" in err and "not found" not in err


def test_bench_vllm_without_vllm_says_so_before_loading_the_model(capsys, monkeypatch):
    import importlib.util

    import blend.loader
    from kvblend import cli

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the benchmark itself runs")

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the missing vllm was noticed")

    monkeypatch.setattr(blend.loader, "load_model", no_load)
    assert cli.main(["bench", "vllm", "--model", "/nonexistent/model"]) == 1
    err = capsys.readouterr().err
    assert "needs the vllm package" in err and "Traceback" not in err
