"""Bad input at the engine's public entry points (load_model, cacheblend, generate): each is refused with one
ValueError / ConfigError naming the culprit, never an IndexError from the forward or silently wrong KV."""

import json
import shutil

import pytest
import torch

from blend.cacheblend import BlendConfig, ChunkKV, blend, full_prefill, naive, precompute_chunk, prefix_reuse
from blend.config import ConfigError, ModelConfig
from blend.generate import generate
from blend.kv_cache import KVCache
from blend.loader import load_model
from tests.test_loader_damage import BASE
from tests.tiny_models import hf_model


@pytest.fixture(scope="module")
def model(hf_checkpoints):
    return load_model(hf_checkpoints["llama-gqa"], device="cpu").model


def _ids(n, seed=0):
    return torch.randint(6, 320, (n,), generator=torch.Generator().manual_seed(seed))


def _deeper(chunk: ChunkKV) -> ChunkKV:
    """The chunk as a model with one more layer (same heads and head_dim) would have computed it."""
    k, v = (torch.cat([t, t[:1]]) for t in (chunk.k, chunk.v))  # [n_layers + 1, n_kv_heads, n, head_dim]
    return ChunkKV(chunk.tokens, k, v, chunk.positions)


BASELINES = {
    "blend": lambda m, c, p: blend(m, c, p, BlendConfig(recompute_ratio=0.5)),
    "naive": naive,
    "prefix_reuse": prefix_reuse,
}


@pytest.mark.parametrize("mode", sorted(BASELINES))
@pytest.mark.parametrize("damage", ["deeper model", "other head_dim", "short positions", "integer kv"])
def test_a_chunk_that_does_not_fit_the_model_is_refused(model, mode, damage):
    good = precompute_chunk(model, _ids(12))
    if damage == "deeper model":  # the old code blended the first n_layers of it: silently wrong KV
        bad = _deeper(good)
    elif damage == "other head_dim":
        bad = ChunkKV(good.tokens, good.k[..., :8], good.v[..., :8], good.positions)
    elif damage == "short positions":
        bad = ChunkKV(good.tokens, good.k, good.v, good.positions[:5])
    else:
        bad = ChunkKV(good.tokens, good.k.round().long(), good.v.round().long(), good.positions)
    with pytest.raises(ValueError, match="chunk"):
        BASELINES[mode](model, [bad, precompute_chunk(model, _ids(7, 1))], _ids(5, 2))


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.5])
def test_blend_refuses_an_empty_prompt(model, ratio):
    # The old code returned the logits of whichever context token the check happened to keep last.
    chunks = [precompute_chunk(model, _ids(13)), precompute_chunk(model, _ids(29, 1))]
    with pytest.raises(ValueError, match="at least one token"):
        blend(model, chunks, _ids(0), BlendConfig(recompute_ratio=ratio))
    with pytest.raises(ValueError, match="at least one token"):
        blend(model, [], _ids(0))


def test_prefix_reuse_needs_a_chunk(model):
    with pytest.raises(ValueError, match="at least one chunk"):
        prefix_reuse(model, [], _ids(5))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(check_layers=(-1,)), "integers >= 0"),  # the old code recomputed every token at every layer
        (dict(check_layers=(1.5,)), "integers >= 0"),
        (dict(check_layers=(1, 2), later_ratios=(0.5,)), "must not grow"),
        (dict(check_layers=(1, 2), later_ratios=(-0.1,)), r"in \[0, 1\]"),
        (dict(check_layers=(1, 2), later_ratios=(float("nan"),)), r"in \[0, 1\]"),
        (dict(chunk_start_tokens=-2), "chunk_start_tokens"),
    ],
)
def test_bad_blend_config_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        BlendConfig(**kw)


def test_blend_config_sequences_become_tuples():
    cfg = BlendConfig(recompute_ratio=0.3, check_layers=[1, 2], later_ratios=[0.1])
    assert cfg.check_layers == (1, 2) and cfg.later_ratios == (0.1,)
    hash(cfg)


@pytest.mark.parametrize("bad_id", [-1, 320, 10_000])
def test_token_ids_outside_the_vocabulary_are_named(model, bad_id):
    chunk = precompute_chunk(model, _ids(9))
    prompt = torch.cat([_ids(4, 3), torch.tensor([bad_id])])
    for call in (
        lambda: blend(model, [chunk], prompt),
        lambda: naive(model, [chunk], prompt),
        lambda: full_prefill(model, [chunk], prompt),
        lambda: prefix_reuse(model, [chunk], prompt),
        lambda: precompute_chunk(model, prompt),
        lambda: generate(model, prompt.tolist(), 3),
    ):
        with pytest.raises(ValueError, match=f"token id {bad_id}, outside the model's vocabulary"):
            call()
    bad_chunk = ChunkKV(prompt, *(t[:, :, :5] for t in (chunk.k, chunk.v)), torch.arange(5))
    with pytest.raises(ValueError, match=f"token id {bad_id}"):
        blend(model, [bad_chunk], _ids(3))


@pytest.mark.parametrize("prompt", [_ids(6)[None], _ids(6).float(), torch.tensor(3)])
def test_a_prompt_that_is_not_1d_token_ids_is_named(model, prompt):
    chunk = precompute_chunk(model, _ids(9))
    for fn in (blend, naive, full_prefill):
        with pytest.raises(ValueError, match="the prompt must be a 1-D tensor of token ids"):
            fn(model, [chunk], prompt)


def test_precompute_refuses_a_negative_offset_and_a_foreign_prefix(model):
    with pytest.raises(ValueError, match="offset must be a position"):
        precompute_chunk(model, _ids(5), offset=-3)
    prefix = model.new_cache(4)
    prefix.reserve(2)
    foreign = KVCache.from_tensors(*(torch.cat([t, t[:1]]) for t in (prefix.k, prefix.v)), prefix.positions)
    with pytest.raises(ValueError, match="the prefix cache has KV of shape"):
        precompute_chunk(model, _ids(5), prefix=foreign)


def test_generate_checks_the_prompt_and_cache(model):
    with pytest.raises(ValueError, match="the prompt must be a 1-D tensor"):
        generate(model, [1.5, 2.0], 3)
    with pytest.raises(ValueError, match="the cache has KV of shape"):
        generate(model, [7, 8], 3, cache=_foreign_cache(model))
    assert generate(model, [7, 8], 0).tokens == []  # nothing asked: nothing checked or run


def _foreign_cache(model):
    c = model.cfg
    return KVCache(c.n_layers + 1, c.n_kv_heads, c.head_dim, 16)


# -- config.json ---------------------------------------------------------------------------------------


def test_rope_scaling_wins_over_rope_parameters_as_in_transformers(hf_checkpoints, tmp_path):
    # A scaling added to a transformers 5 config (which writes rope_parameters): transformers applies it; the
    # old loader read rope_parameters alone and silently ran default RoPE.
    src = hf_checkpoints["llama-gqa"]
    d = tmp_path / "scaled"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "default"
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    lm = load_model(d, device="cpu")
    assert (lm.config.rope.rope_type, lm.config.rope.factor) == ("linear", 4.0)
    toks = _ids(200)[None]
    with torch.no_grad():
        ref = hf_model(d)(toks).logits[0]
    torch.testing.assert_close(lm.model(toks)[0], ref, atol=1e-4, rtol=1e-4)

    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported rope scaling 'yarn'"):
        load_model(d, device="cpu")


@pytest.mark.parametrize(
    "changes, message",
    [
        # bool("false") is True: the old loader tied the embeddings (or expected bias tensors) silently.
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
        ({"attention_bias": "no"}, "attention_bias must be true or false, got 'no'"),
        ({"mlp_bias": [0]}, r"mlp_bias must be true or false, got \[0\]"),
        (
            {"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": "false", "sliding_window": 8},
            "use_sliding_window must be true or false",
        ),
        ({"architectures": "LlamaForCausalLM"}, "architectures must be a list of class names"),
        ({"architectures": None, "model_type": ["llama"]}, "model_type must be a string"),
    ],
)
def test_malformed_flags_and_names_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(dict(BASE, **changes))


def test_json_booleans_and_0_1_still_read():
    cfg = ModelConfig.from_hf(dict(BASE, tie_word_embeddings=True, attention_bias=0, mlp_bias=None))
    assert (cfg.tie_embeddings, cfg.qkv_bias, cfg.mlp_bias) == (True, False, False)


def test_unreadable_config_json_is_a_config_error(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read config.json"):
        ModelConfig.from_file(tmp_path / "config.json")
