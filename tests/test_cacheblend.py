"""CacheBlend on tiny random checkpoints: exactness at the extremes, re-rotation, the per-position mask."""

import pytest
import torch

from blend.cacheblend import BlendConfig, blend, full_prefill, naive, precompute_chunk, prefix_reuse
from blend.generate import generate
from blend.loader import load_model


@pytest.fixture(scope="module")
def models(hf_checkpoints):
    return {name: load_model(hf_checkpoints[name], device="cpu").model for name in hf_checkpoints}


def _chunks(model, sizes=(13, 29, 7, 21), seed=0, offset=0):
    g = torch.Generator().manual_seed(seed)
    return [precompute_chunk(model, torch.randint(6, 320, (n,), generator=g), offset=offset) for n in sizes]


def _prompt(n=9, seed=1):
    return torch.randint(6, 320, (n,), generator=torch.Generator().manual_seed(seed))


def _greedy_from(model, result, n=16):
    out, logits = [], result.logits
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model.decode(out[-1], result.cache)
    return out


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_precompute_skips_the_last_layers_attention_and_mlp_yet_keeps_the_same_kv(models, name, monkeypatch):
    model = models[name]
    toks = _prompt(40, seed=5)
    cache = model.new_cache(40)
    model.prefill(toks, cache)  # the full forward, logits and all
    finished, finish = [], model.layer_finish
    monkeypatch.setattr(model, "layer_finish", lambda i, *a, **k: finished.append(i) or finish(i, *a, **k))
    kv = precompute_chunk(model, toks, offset=0)
    assert finished == list(range(model.cfg.n_layers - 1))  # no attention or MLP in the last layer
    assert torch.equal(kv.k, cache.k) and torch.equal(kv.v, cache.v)  # the very same bits


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
@pytest.mark.parametrize("order", ["increasing", "last-not-latest"])
def test_prefill_finishes_the_last_layer_for_the_last_token_only(models, name, order, monkeypatch):
    model = models[name]
    toks = _prompt(40, seed=6)
    positions = torch.arange(40) if order == "increasing" else torch.cat([torch.arange(20), torch.arange(39, 19, -1)])
    every = model.new_cache(48)
    all_logits = model.prefill(toks, every, positions=positions, all_logits=True)  # [40, vocab]
    rows, finish = [], model.layer_finish
    monkeypatch.setattr(model, "layer_finish", lambda i, h, *a, **k: rows.append(h.shape[0]) or finish(i, h, *a, **k))
    cache = model.new_cache(48)
    logits = model.prefill(toks, cache, positions=positions)
    assert rows == [40] * (model.cfg.n_layers - 1) + [1]
    torch.testing.assert_close(logits, all_logits[-1], rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.k, every.k) and torch.equal(cache.v, every.v)  # the last layer's K/V of every token


def test_blend_finishes_the_last_layer_for_the_last_prompt_token_only(models, monkeypatch):
    model = models["llama-gqa"]
    chunks, prompt = _chunks(model, seed=7), _prompt(seed=8)
    rows, finish = [], model.layer_finish
    monkeypatch.setattr(model, "layer_finish", lambda i, h, *a, **k: rows.append(h.shape[0]) or finish(i, h, *a, **k))
    res = blend(model, chunks, prompt, BlendConfig(recompute_ratio=0.5))
    # layer 0 runs every token, the selective layers the kept ones, the last one only the token whose logits
    # are returned (that the kept tokens' last-layer K/V are still written: test_ratio_one_reproduces_full_prefill)
    assert rows == [len(res.cache.positions)] + [res.selected.shape[0]] * (model.cfg.n_layers - 2) + [1]


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2"])  # qwen2: q/k/v biases
def test_the_check_layers_k_v_and_kept_q_are_the_fused_projections(models, name):
    model = models[name]
    h = torch.randn(23, model.cfg.dim)
    cos, sin = model.rope_tables(torch.arange(23))
    q, k, v = model.layer_qkv(1, h, (cos, sin))
    k2, v2 = model.layer_kv(1, h, (cos, sin))
    rows = torch.tensor([0, 4, 5, 17, 22])
    q2 = model.layer_q(1, h[rows], (cos[rows], sin[rows]))
    assert q2.shape == (model.cfg.n_heads, 5, model.cfg.head_dim) and k2.shape == k.shape
    torch.testing.assert_close(k2, k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v2, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q2, q[:, rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2", "mistral-window", "llama-mqa-tied-llama3", "llama-hd24-linear"])
def test_ratio_one_reproduces_full_prefill(models, name):
    model = models[name]
    chunks, prompt = _chunks(model), _prompt()
    full = full_prefill(model, chunks, prompt)
    res = blend(model, chunks, prompt, BlendConfig(recompute_ratio=1.0))
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    assert (res.cache.k - full.cache.k).abs().max().item() < 1e-4
    full_tokens = _greedy_from(model, full)
    assert _greedy_from(model, res) == full_tokens
    ids = torch.cat([c.tokens for c in chunks] + [prompt]).tolist()
    assert full_tokens == generate(model, ids, 16).tokens


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_ratio_zero_equals_naive_and_differs_from_full(models, name):
    model = models[name]
    chunks, prompt = _chunks(model, seed=2), _prompt(seed=3)
    res = blend(model, chunks, prompt, BlendConfig(recompute_ratio=0.0))
    nai = naive(model, chunks, prompt)
    assert (res.logits - nai.logits).abs().max().item() < 1e-4
    assert res.selected.tolist() == list(range(70, 79))  # only the prompt
    full = full_prefill(model, chunks, prompt)
    assert (nai.logits - full.logits).abs().max().item() > 1e-3  # cross-chunk attention matters here


def test_moving_a_chunk_equals_precomputing_it_there(models):
    from blend.cacheblend import _fill_reused, _moves

    model = models["llama-gqa"]
    g = torch.Generator().manual_seed(4)
    toks = torch.randint(6, 320, (50,), generator=g)
    d = 37
    at0 = precompute_chunk(model, toks, offset=0)
    atd = precompute_chunk(model, toks, offset=d)
    cache = model.new_cache(50)
    cache.set_positions(cache.reserve(50), torch.arange(d, d + 50))  # the chunk's new place: d .. d + 49
    move = _moves(model, [at0], [0, 50], cache)
    for i in range(model.cfg.n_layers):
        _fill_reused(model, i, [at0], [0, 50], cache, move)
    assert (cache.k - atd.k).abs().max().item() < 1e-5
    assert (cache.v - atd.v).abs().max().item() < 1e-5
    assert torch.equal(cache.v[0], atd.v[0])  # layer 0 V depends on the token alone


def test_selected_tokens_see_only_earlier_positions(models, monkeypatch):
    """Recomputed tokens in the middle of the context must not attend to later keys.

    The blend's selective attention must equal the dense per-position mask of the engine, and a
    bottom-right-aligned mask (query j of n_sel sees keys up to N - n_sel + j) gives a different answer.
    """
    model = models["llama-gqa"]
    chunks, prompt = _chunks(model, seed=5), _prompt(seed=6)
    cfg = BlendConfig(recompute_ratio=0.4)
    ours = blend(model, chunks, prompt, cfg)
    assert ours.selected.min() < 40  # some selected tokens sit early in the context

    real_finish = type(model).layer_finish

    def dense(self, i, h, q, positions, cache, mask="auto"):
        return real_finish(self, i, h, q, positions, cache, "auto")

    monkeypatch.setattr(type(model), "layer_finish", dense)
    reference = blend(model, chunks, prompt, cfg)
    assert (ours.logits - reference.logits).abs().max().item() < 1e-4
    assert (ours.cache.k - reference.cache.k).abs().max().item() < 1e-4

    def bottom_right(self, i, h, q, positions, cache, mask="auto"):
        n, t = cache.n, q.shape[1]
        allowed = torch.arange(n)[None, :] <= (n - t + torch.arange(t))[:, None]
        return real_finish(self, i, h, q, positions, cache, allowed)

    monkeypatch.setattr(type(model), "layer_finish", bottom_right)
    wrong = blend(model, chunks, prompt, cfg)
    assert (wrong.cache.k - reference.cache.k).abs().max().item() > 1e-3


def test_gradual_filtering_and_chunk_starts(models):
    model = models["llama-gqa"]
    chunks, prompt = _chunks(model, seed=7), _prompt(seed=8)
    full = full_prefill(model, chunks, prompt)
    res = blend(model, chunks, prompt, BlendConfig(recompute_ratio=1.0, check_layers=(1, 2), later_ratios=(1.0,)))
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    res = blend(model, chunks, prompt, BlendConfig(0.3, check_layers=(1, 2), later_ratios=(0.1,), chunk_start_tokens=2))
    starts = {0, 1, 13, 14, 42, 43, 49, 50}
    assert starts <= set(res.selected.tolist())
    assert res.selected.shape[0] == 9 + 8 + 7  # prompt + chunk starts + ceil(0.1 * 70)


def test_prefix_reuse_is_exact_when_first_chunk_is_a_true_prefix(models):
    model = models["qwen2"]
    chunks, prompt = _chunks(model, seed=9), _prompt(seed=10)
    full = full_prefill(model, chunks, prompt)
    pre = prefix_reuse(model, chunks, prompt)
    assert (pre.logits - full.logits).abs().max().item() < 1e-4
    moved = _chunks(model, seed=9, offset=5)
    with pytest.raises(ValueError, match="positions 0..n-1"):
        prefix_reuse(model, moved, prompt)


def test_bad_config_raises():
    with pytest.raises(ValueError):
        BlendConfig(recompute_ratio=1.5)
    with pytest.raises(ValueError):
        BlendConfig(check_layers=(2, 1))
    with pytest.raises(ValueError):
        BlendConfig(check_layers=(1, 2))  # missing later ratio
