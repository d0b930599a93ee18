"""The engine abstraction (torch reference, factory) and the blended-KV hand-off; no vLLM needed."""

import pytest
import torch

from blend.cacheblend import precompute_chunk
from blend.loader import load_model
from kvblend.engine import Engine, EngineRequest, TorchEngine, make_engine
from kvblend.kv_handoff import HandoffKey, KVHandoff, handoff_stats


@pytest.fixture(scope="module")
def lm():
    return load_model(None, device="cpu")


def _request(lm, mode="blend", ratio=0.15, max_tokens=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    chunks = [precompute_chunk(lm.model, torch.randint(10, 4000, (n,), generator=g), offset=0) for n in (40, 25, 33)]
    prompt = torch.randint(10, 4000, (17,), generator=g).tolist()
    return EngineRequest(chunks, prompt, max_tokens, frozenset({0}), mode, ratio)


def test_torch_engine_ratio_one_equals_full_prefill(lm):
    engine = make_engine("torch", lm)
    full = engine.generate(_request(lm, "full"))
    blended = engine.generate(_request(lm, "blend", 1.0))
    assert len(full.tokens) == 12 and full.stop_reason == "max_tokens"
    assert blended.tokens == full.tokens
    assert full.prefilled == 98 + 17 and 0 < full.ttft_s <= full.total_s


def test_torch_engine_ratio_zero_recomputes_only_the_prompt(lm):
    out = TorchEngine(lm).generate(_request(lm, "blend", 0.0))
    assert out.prefilled == 17
    assert len(out.tokens) <= 12


def test_engine_request_is_checked():
    with pytest.raises(ValueError, match="unknown mode"):
        EngineRequest([], [1, 2], mode="fast")
    with pytest.raises(ValueError, match="at least one token"):
        EngineRequest([], [])
    with pytest.raises(ValueError, match="max_tokens"):
        EngineRequest([], [1], max_tokens=0)


def test_make_engine_raises_on_unknown_names(lm):
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        make_engine("tensorrt", lm)
    with pytest.raises(ValueError, match="takes no options"):
        make_engine("torch", lm, dtype="float32")


def test_make_engine_vllm_without_vllm_says_how_to_get_it(lm):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the vllm package"):
            make_engine("vllm", lm)
    else:
        pytest.skip("vllm is installed here: tests/test_vllm_connector.py covers it")


def test_handoff_key_round_trip_and_prefix_match():
    key = HandoffKey.of([5, 6, 7])
    assert HandoffKey.from_str(key.to_str()) == key
    assert key.matches([5, 6, 7, 8]) and key.matches([5, 6, 7])
    assert not key.matches([5, 6]) and not key.matches([5, 6, 9, 8])
    for bad in ("", "3", "x-" + "0" * 32, "3-" + "z" * 32, "3-abc"):
        with pytest.raises(ValueError, match="not a kvblend hand-off key"):
            HandoffKey.from_str(bad)


@pytest.mark.parametrize("on_disk", [False, True])
def test_handoff_put_get_drop(tmp_path, on_disk):
    store = KVHandoff(tmp_path / "kv" if on_disk else None)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    before = handoff_stats()
    key = store.put([1, 2, 3, 4, 5], k, v)
    assert store.has(key) and key.n_tokens == 5
    got = store.get(key)
    assert got is not None and torch.equal(got[0], k) and torch.equal(got[1], v)
    assert (tmp_path / "kv" / f"{key.to_str()}.safetensors").is_file() == on_disk
    store.drop(key)
    assert not store.has(key) and store.get(key) is None
    after = handoff_stats()
    assert after["puts"] == before.get("puts", 0) + 1 and after["loads"] == before.get("loads", 0) + 1
    assert after["misses"] == before.get("misses", 0) + 1
    with pytest.raises(ValueError, match="must be"):
        store.put([1, 2], k, v)


def test_cli_engine_choices_are_the_factory_names():
    from kvblend import cli, engine

    assert cli.ENGINES == engine.ENGINES
    args = cli.build_parser().parse_args(["serve", "--engine", "vllm"])
    assert args.engine == "vllm"
    assert cli.build_parser().parse_args(["serve"]).engine == "torch"


def test_completer_on_an_external_engine_matches_its_own_run(lm):
    from kvblend.completer import Completer
    from kvblend.completion import CompletionRequest
    from kvblend.settings import Settings

    class Outside(Engine):  # another engine in the Completer's eyes, doing the torch engine's work
        name = "outside"

        def generate(self, request):
            self.seen = request
            return TorchEngine(self.lm).generate(request)

    text = "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        "
    req = CompletionRequest("util.py", text, len(text))
    settings = Settings(mode="full")
    own = Completer(lm, settings).complete(req)
    engine = Outside(lm)
    via = Completer(lm, settings, engine=engine).complete(req)
    assert engine.seen.mode == "full" and engine.seen.max_tokens >= 1
    assert via.text == own.text and via.kv_path == "full"
    assert "ttft" in via.timings_ms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_is_the_hugging_face_formula_bit_for_bit(dtype):
    from blend.model import RMSNorm

    norm = RMSNorm(48, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(7, 48).to(dtype) * 3
    xf = x.float()
    expected = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(norm(x), expected)


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "T"), [(4, 2, 1), (6, 1, 1), (4, 2, 3), (4, 4, 1)])
def test_attention_over_every_key_folds_the_query_group_exactly(n_heads, n_kv_heads, T, monkeypatch):
    """A decode step (no mask) folds each KV head's query group into the query axis: the same output as the
    kernel's own GQA, and the kernel sees no repeated heads."""
    from blend.config import ModelConfig
    from blend.model import Attention

    cfg = ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=16,
                      intermediate_size=32)  # fmt: skip
    attn = Attention(cfg)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, n_heads, T, 16, generator=g)
    k, v = (torch.randn(1, n_kv_heads, 37, 16, generator=g) for _ in range(2))
    sdpa, shapes = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q_, *a, **kw: shapes.append(q_.shape) or sdpa(q_, *a, **kw))  # fmt: skip
    out = attn.attend(q, k, v, None, False)
    expected = sdpa(q, k.repeat_interleave(n_heads // n_kv_heads, 1), v.repeat_interleave(n_heads // n_kv_heads, 1))
    expected = attn.o_proj(expected.transpose(1, 2).reshape(1, T, n_heads * 16))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert shapes == [(1, n_kv_heads, n_heads // n_kv_heads * T, 16)]
