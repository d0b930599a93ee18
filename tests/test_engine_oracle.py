"""Our engine against transformers on the same random checkpoints (fp32, CPU)."""

import pytest
import torch

from blend.generate import generate
from blend.loader import load_model
from tests.tiny_models import TINY_CONFIGS, hf_model

ATOL = 1e-4
NAMES = sorted(TINY_CONFIGS)


@pytest.fixture(scope="module")
def pairs(hf_checkpoints):
    return {name: (load_model(hf_checkpoints[name], device="cpu"), hf_model(hf_checkpoints[name])) for name in NAMES}


def _tokens(n, seed=1, vocab=320):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_full_prefill_matches_transformers(pairs, name):
    lm, hf = pairs[name]
    toks = _tokens(57)
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    ours = lm.model.prefill(toks, lm.model.new_cache(), all_logits=True)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < ATOL
    assert ref.std() > 0.5  # the oracle is not trivially flat


@pytest.mark.parametrize("name", NAMES)
def test_chunked_prefill_at_offsets_matches_transformers(pairs, name):
    lm, hf = pairs[name]
    toks = _tokens(61, seed=2)
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    cache = lm.model.new_cache(capacity=5)  # forces the cache to grow several times
    pieces = []
    for start, end in [(0, 7), (7, 8), (8, 30), (30, 61)]:
        pieces.append(lm.model.prefill(toks[start:end], cache, all_logits=True))
    ours = torch.cat(pieces)
    assert (ours - ref).abs().max().item() < ATOL
    assert cache.positions.tolist() == list(range(61))


@pytest.mark.parametrize("name", NAMES)
def test_cache_keys_are_post_rope_in_agreed_layout(pairs, name):
    lm, hf = pairs[name]
    toks = _tokens(20, seed=3)
    with torch.no_grad():
        out = hf(toks[None], use_cache=True)
    cache = lm.model.new_cache()
    lm.model.prefill(toks, cache)
    cfg = lm.config
    assert cache.k.shape == (cfg.n_layers, cfg.n_kv_heads, 20, cfg.head_dim)
    for i in range(cfg.n_layers):
        layer = out.past_key_values.layers[i]
        assert (cache.k[i] - layer.keys[0]).abs().max().item() < ATOL
        assert (cache.v[i] - layer.values[0]).abs().max().item() < ATOL


@pytest.mark.parametrize("name", NAMES)
def test_greedy_decode_16_steps_matches_transformers(pairs, name):
    lm, hf = pairs[name]
    prompt = _tokens(12, seed=4).tolist()
    ours = generate(lm.model, prompt, max_tokens=16).tokens
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(16):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    assert ours == seq[len(prompt) :]


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_span_at_offset_on_top_of_cache_equals_full_prefill(pairs, name):
    lm, _ = pairs[name]
    toks = _tokens(48, seed=5)
    full = lm.model.new_cache()
    full_logits = lm.model.prefill(toks, full, all_logits=True)
    p = 29
    cache = lm.model.new_cache()
    lm.model.prefill(toks[:p], cache)
    span_logits = lm.model.prefill(toks[p:], cache, positions=torch.arange(p, 48), all_logits=True)
    assert (span_logits - full_logits[p:]).abs().max().item() < 1e-5
    assert (cache.k - full.k).abs().max().item() < 1e-5
    assert (cache.v - full.v).abs().max().item() < 1e-5
    assert torch.equal(cache.positions, full.positions)


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_layer_step_on_a_subset_sees_only_earlier_positions(pairs, name):
    """Recomputing scattered tokens over an exact cache reproduces them: the mask is per position."""
    lm, _ = pairs[name]
    model = lm.model
    toks = _tokens(40, seed=6)
    cache = model.new_cache()
    ref = model.prefill(toks, cache, all_logits=True)
    sel = torch.tensor([2, 11, 12, 30])
    with torch.inference_mode():
        pos = cache.positions[sel]
        k_before = cache.k.clone()
        cache._k[:, :, sel] = 0  # the selected tokens' K/V must be rebuilt by the steps
        cache._v[:, :, sel] = 0
        h = model.embed(toks[sel])
        for i in range(model.cfg.n_layers):
            h = model.layer_step(i, h, pos, cache, sel)
        ours = model.logits(h)
    assert (ours - ref[sel]).abs().max().item() < 1e-5
    assert (cache.k - k_before).abs().max().item() < 1e-5


def test_attention_mask_positions_and_window():
    from blend.model import attention_mask

    q = torch.tensor([5, 9])
    kv = torch.tensor([0, 3, 5, 7, 9])
    assert attention_mask(q, kv, None).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert attention_mask(q, kv, 4).tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert attention_mask(torch.tensor([9]), kv, None) is None


def test_long_prefill_crosses_mlp_row_blocks(pairs):
    from blend.model import MLP_ROW_BLOCK

    lm, hf = pairs["qwen2"]
    toks = _tokens(MLP_ROW_BLOCK + 77, seed=7)
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    ours = lm.model.prefill(toks, lm.model.new_cache(), all_logits=True)
    assert (ours - ref).abs().max().item() < ATOL


@pytest.mark.parametrize("name", ["qwen2", "mistral-window", "llama-mqa-tied-llama3"])
def test_long_chunked_prefill_takes_the_selective_path_exactly(pairs, name):
    from blend.model import SELECTIVE_MIN_QUERIES

    lm, hf = pairs[name]
    toks = _tokens(300, seed=8)
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    cache = lm.model.new_cache()
    first = lm.model.prefill(toks[:100], cache, all_logits=True)
    rest = lm.model.prefill(toks[100:], cache, all_logits=True)
    assert 200 >= SELECTIVE_MIN_QUERIES
    assert (torch.cat([first, rest]) - ref).abs().max().item() < ATOL
