"""kvblend's vLLM KV connector on the bundled model, in vLLM itself (CPU backend).

Marked `vllm`: runs only where vLLM is installed (its own virtual environment, see README "vLLM"):
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_connector.py
Elsewhere every test here is skipped.
"""

import pytest
import torch

vllm = pytest.importorskip("vllm")

from blend.cacheblend import precompute_chunk  # noqa: E402
from blend.loader import load_model  # noqa: E402
from kvblend.bench_blend import make_sequences  # noqa: E402
from kvblend.engine import EngineRequest, TorchEngine, make_engine  # noqa: E402
from kvblend.kv_handoff import handoff_stats  # noqa: E402
from kvblend.vllm_connector import slot_mapping, usable_tokens  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def lm():
    return load_model(None, device="cpu")


@pytest.fixture(scope="module")
def engine(lm):
    eng = make_engine("vllm", lm, dtype="float32", max_model_len=2048, cpu_kv_cache_gib=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def request_parts(lm):
    """Held-out stdlib code: a repo header and 4 chunks of 256 tokens, then a local prompt of 100 tokens."""
    header, pieces, prompt = make_sequences(lm, 4, 256, 100)
    chunks = [precompute_chunk(lm.model, torch.tensor(header), offset=0)]
    chunks += [precompute_chunk(lm.model, torch.tensor(p), offset=len(header)) for p in pieces]
    return chunks, prompt


def _req(parts, mode, ratio=1.0, max_tokens=24):
    chunks, prompt = parts
    return EngineRequest(chunks, prompt, max_tokens, frozenset({0}), mode, ratio)


def test_usable_tokens_leave_one_token_and_whole_blocks():
    assert usable_tokens(1130, 1130, 128) == 1024  # at most all but one, in whole blocks
    assert usable_tokens(1000, 1130, 128) == 896  # no more than the key holds
    assert usable_tokens(1130, 129, 128) == 128
    assert usable_tokens(1130, 128, 128) == 0  # 127 tokens: not one whole block


def test_slot_mapping_follows_the_block_table():
    got = slot_mapping([7, 2, 9], 4, 2, 10)
    assert got.tolist() == [30, 31, 8, 9, 10, 11, 36, 37]


def test_ratio_one_through_the_connector_equals_vllm_full_prefill(engine, request_parts):
    full = engine.generate(_req(request_parts, "full"))
    before = handoff_stats().get("loads", 0)
    blended = engine.generate(_req(request_parts, "blend", 1.0))
    assert handoff_stats().get("loads", 0) == before + 1, "the connector did not load the blended KV"
    assert len(full.tokens) >= 8
    assert blended.tokens == full.tokens


def test_vllm_full_prefill_equals_our_engine(engine, lm, request_parts):
    ours = TorchEngine(lm).generate(_req(request_parts, "full"))
    assert engine.generate(_req(request_parts, "full")).tokens == ours.tokens


def test_vllm_decodes_from_the_kv_it_is_given(engine, request_parts):
    """KV from the connector is what vLLM attends to: scrambled values change the output."""
    req = _req(request_parts, "full")
    tokens = req.all_tokens
    n_layers, n_kv, dim = engine.lm.config.n_layers, engine.lm.config.n_kv_heads, engine.lm.config.head_dim
    g = torch.Generator().manual_seed(0)
    k = torch.randn(n_layers, n_kv, len(tokens), dim, generator=g)
    key = engine.handoff.put(tokens, k, torch.randn(k.shape, generator=g) * 10)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=24, detokenize=False,
                                 extra_args={"kv_transfer_params": {"kvblend_key": key.to_str()}})  # fmt: skip
    before = handoff_stats().get("loads", 0)
    out = engine.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    engine.handoff.drop(key)
    assert handoff_stats().get("loads", 0) == before + 1
    assert list(out.outputs[0].token_ids)[:8] != engine.generate(req).tokens[:8]


def test_a_key_for_other_tokens_is_ignored(engine, request_parts):
    """A stale key (the prompt does not begin with its tokens) must not be loaded: vLLM prefills in full."""
    req = _req(request_parts, "full")
    tokens = req.all_tokens
    c = engine.lm.config
    key = engine.handoff.put([t + 1 for t in tokens], torch.zeros(c.n_layers, c.n_kv_heads, len(tokens), c.head_dim),
                             torch.zeros(c.n_layers, c.n_kv_heads, len(tokens), c.head_dim))  # fmt: skip
    params = vllm.SamplingParams(temperature=0.0, max_tokens=24, detokenize=False, stop_token_ids=[0],
                                 extra_args={"kv_transfer_params": {"kvblend_key": key.to_str()}})  # fmt: skip
    before = handoff_stats().get("loads", 0)
    out = engine.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    engine.handoff.drop(key)
    assert handoff_stats().get("loads", 0) == before
    ids = [t for t in out.outputs[0].token_ids if t != 0]
    assert ids == engine.generate(req).tokens


def test_blend_at_default_ratio_through_vllm_stays_close(engine, lm, request_parts):
    """r = 0.15: vLLM through the connector decodes what our engine decodes from the same blend."""
    ours = TorchEngine(lm).generate(_req(request_parts, "blend", 0.15))
    theirs = engine.generate(_req(request_parts, "blend", 0.15))
    agree = sum(a == b for a, b in zip(ours.tokens, theirs.tokens, strict=False))
    assert agree >= len(ours.tokens) // 2, (ours.tokens, theirs.tokens)


def test_eval_through_the_vllm_engine_matches_ours_at_full_prefill(lm, engine, tmp_path):
    """`kvblend eval --engine vllm` runs each request through vLLM: full prefill there gives our predictions."""
    from pathlib import Path

    from kvblend.eval.config import EvalConfig
    from kvblend.eval.datasets import load_dataset
    from kvblend.eval.runner import run_items

    data = Path(__file__).parent / "data" / "eval_five.jsonl"
    _, items = load_dataset(data, seed=0, limit=2)
    cfg = EvalConfig(data, tmp_path, limit=2, modes=("full",), plots=False)
    specs = cfg.specs(has_context=True)
    ours = run_items(lm, items, specs, cfg)
    theirs = run_items(lm, items, specs, cfg, engine=engine)
    assert [r["prediction"] for r in theirs] == [r["prediction"] for r in ours]


def _generate_with_key(engine, tokens, key, max_tokens=24):
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, detokenize=False, stop_token_ids=[0],
                                 extra_args={"kv_transfer_params": {"kvblend_key": key.to_str()}})  # fmt: skip
    out = engine.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    return [t for t in out.outputs[0].token_ids if t != 0], out.outputs[0].finish_reason


def test_kv_that_vanishes_before_loading_is_recomputed(engine, request_parts, monkeypatch):
    """The hand-off was there when the scheduler matched it and gone when the worker loaded it (a file dropped
    or damaged meanwhile): vLLM's default policy failed the request, so the completion came back empty."""
    from kvblend.kv_handoff import KVHandoff

    full = engine.generate(_req(request_parts, "full"))
    monkeypatch.setattr(KVHandoff, "get", lambda self, key: None)
    blended = engine.generate(_req(request_parts, "blend", 1.0))
    assert len(full.tokens) >= 8 and blended.tokens == full.tokens


def test_kv_dropped_between_match_and_allocation_does_not_crash_vllm(engine, request_parts, monkeypatch):
    """The scheduler looked the key up again after allocating blocks; KV dropped in between (another request
    for the same prompt finishing, another process) failed an assertion inside vLLM's scheduler."""
    from kvblend.kv_handoff import KVHandoff

    full = engine.generate(_req(request_parts, "full"))
    has = KVHandoff.has

    def has_then_vanish(self, key):
        found = has(self, key)
        self.drop(key)
        return found

    monkeypatch.setattr(KVHandoff, "has", has_then_vanish)
    assert engine.generate(_req(request_parts, "blend", 1.0)).tokens == full.tokens


@pytest.mark.parametrize("other", ["layers", "kv_heads", "head_dim"])
def test_kv_of_another_model_shape_is_refused(engine, request_parts, other):
    """KV of another model under a matching key (a shared hand-off directory, another checkpoint in our engine)
    went into vLLM's cache: an IndexError or a shape error inside vLLM's worker, or wrong KV."""
    req = _req(request_parts, "full")
    tokens = req.all_tokens
    c = engine.lm.config
    shape = [c.n_layers, c.n_kv_heads, len(tokens), c.head_dim]
    shape[{"layers": 0, "kv_heads": 1, "head_dim": 3}[other]] += {"layers": -1, "kv_heads": 1, "head_dim": 16}[other]
    key = engine.handoff.put(tokens, torch.zeros(shape), torch.zeros(shape))
    before = handoff_stats().get("loads", 0)
    try:
        ids, reason = _generate_with_key(engine, tokens, key)
    finally:
        engine.handoff.drop(key)
    assert handoff_stats().get("loads", 0) == before + 1  # it was looked at, then refused
    assert reason != "error" and ids == engine.generate(req).tokens


def test_two_requests_at_once_get_their_own_tokens(engine, request_parts):
    """Two threads in `generate` at once (an eval or server with more than one worker): both stepped the same
    vLLM engine and could take each other's outputs."""
    import threading

    chunks, prompt = request_parts
    reqs = [_req(request_parts, "blend", 1.0), _req((chunks[:3], prompt), "full", max_tokens=16)]
    want = [engine.generate(r).tokens for r in reqs]
    got, errors, barrier = [None, None], [], threading.Barrier(2)

    def run(i):
        try:
            barrier.wait()
            got[i] = engine.generate(reqs[i]).tokens
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # the old code deadlocked here
    assert not errors and got == want


def test_a_vllm_dtype_other_than_the_blends_is_refused_before_vllm_starts(lm):
    """The blend computes the handed-over KV in the model's dtype; vLLM in another one was started anyway (the
    default was float32 whatever the model: a GPU model loaded in bfloat16 got a float32 vLLM, twice the memory)."""
    with pytest.raises(ValueError, match="differs from the model's float32"):
        make_engine("vllm", lm, dtype="bfloat16", max_model_len=512, cpu_kv_cache_gib=1)
