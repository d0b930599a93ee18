"""Damaged checkpoints: each is refused at load with one ConfigError / CheckpointError / ValueError that names the
field, file or tensor at fault (the CLI prints it as one line), never a traceback or garbage completions."""

import json
import logging
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import blend.loader
from blend.config import ConfigError, ModelConfig
from blend.loader import load_model
from blend.model import Transformer
from blend.prompt import model_fim_order
from blend.weights import CheckpointError
from kvblend.cli import main

# A valid Llama config (the shape of tests/tiny_models.py's): each case below damages one field of it.
BASE = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 112,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "eos_token_id": 0,
}


def _damaged(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, "rope scaling 'llama3' needs a 'low_freq_factor'"),
        (
            {"rope_scaling": {"type": "linear", "factor": None}},
            "rope_scaling.factor must be a positive number, got None",
        ),
        ({"rope_scaling": {"type": "linear", "factor": "abc"}}, "rope_scaling.factor must be .*, got 'abc'"),
        ({"rope_scaling": {"type": "linear", "factor": 0}}, "rope_scaling.factor must be a positive number, got 0"),
        ({"rope_scaling": [1, 2]}, r"rope_scaling must be an object or null, got \[1, 2\]"),
        ({"rope_scaling": "linear"}, "rope_scaling must be an object or null, got 'linear'"),
        ({"rope_scaling": {"rope_type": 3}}, "rope_scaling.rope_type must be a string, got 3"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_parameters.rope_theta must be .*-1"),
        ({"rope_theta": "abc"}, "rope_theta must be a positive number, got 'abc'"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4}},
            "high_freq_factor > low_freq_factor",
        ),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive integer, got 0"),
        ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
        ({"hidden_size": -256}, "hidden_size must be a positive integer, got -256"),
        ({"hidden_size": 62}, "no head_dim and hidden_size=62 is not divisible by num_attention_heads=4"),
        ({"num_hidden_layers": 6.7}, "num_hidden_layers must be a positive integer, got 6.7"),
        ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer, got True"),
        ({"vocab_size": "320"}, "vocab_size must be a positive integer, got '320'"),
        ({"intermediate_size": None}, "intermediate_size must be a positive integer, got None"),
        ({"head_dim": 0}, "head_dim must be a positive integer, got 0"),
        ({"head_dim": 7}, "head_dim=7 must be even"),
        ({"max_position_embeddings": 0}, "max_position_embeddings must be a positive integer, got 0"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps must be a positive number, got 'x'"),
        ({"eos_token_id": "abc"}, "eos_token_id must be a token id .*, got 'abc'"),
        ({"eos_token_id": [0, {"a": 1}]}, r"eos_token_id must be a token id .*, got \{'a': 1\}"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": -3}, "sliding_window must be .*, got -3"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": 0}, "sliding_window must be .*, got 0"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": "abc"}, "sliding_window must be .*, got 'abc'"),
        (
            {
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
                "sliding_window": 64,
                "layer_types": ["x"],
            },
            r"layer_types must be a list of sliding_attention / full_attention, got \['x'\]",
        ),
    ],
)
def test_malformed_config_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(dict(BASE, **changes))


def test_missing_required_field_is_named():
    hf = dict(BASE)
    del hf["vocab_size"]
    with pytest.raises(ConfigError, match="lacks required field 'vocab_size'"):
        ModelConfig.from_hf(hf)


def test_valid_variants_still_load():
    # Sizes written as floats, null windows (full attention), an unused Qwen2 window and a complete llama3 block.
    cfg = ModelConfig.from_hf(dict(BASE, hidden_size=64.0, num_key_value_heads=None, head_dim=None))
    assert (cfg.dim, cfg.n_kv_heads, cfg.head_dim) == (64, 4, 16)
    mistral = ModelConfig.from_hf(dict(BASE, architectures=["MistralForCausalLM"], sliding_window=None))
    assert mistral.sliding_windows == (None, None, None)
    qwen = ModelConfig.from_hf(
        dict(BASE, architectures=["Qwen2ForCausalLM"], use_sliding_window=False, sliding_window=-1)
    )
    assert qwen.sliding_windows == (None, None, None)
    qwen = ModelConfig.from_hf(
        dict(BASE, architectures=["Qwen2ForCausalLM"], use_sliding_window=True, sliding_window=64, max_window_layers=1)
    )
    assert qwen.sliding_windows == (None, 64, 64)
    llama3 = {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}
    rope = ModelConfig.from_hf(dict(BASE, rope_scaling=llama3)).rope
    assert (rope.factor, rope.low_freq_factor, rope.high_freq_factor) == (8.0, 1.0, 4.0)
    assert rope.original_max_position_embeddings == 512


def test_n_params_counts_what_the_model_allocates(hf_checkpoints):
    for name, path in hf_checkpoints.items():
        cfg = ModelConfig.from_file(path / "config.json")
        with torch.device("meta"):
            model = Transformer(cfg)
        assert cfg.n_params() == sum(p.numel() for p in model.parameters()), name


def test_oversized_model_is_refused_before_allocating(hf_checkpoints, tmp_path, monkeypatch):
    d = _damaged(hf_checkpoints["llama-gqa"], tmp_path / "huge", hidden_size=10**12)
    with pytest.raises(ConfigError, match=r"parameters .* GiB in float32\), more than the .* GiB of memory on cpu"):
        load_model(d, device="cpu")
    # The same check at a small machine's scale: the tiny model (~100k parameters) in 64 KiB of memory.
    monkeypatch.setattr(blend.loader, "device_memory", lambda device: 1 << 16)
    with pytest.raises(ConfigError, match="hidden_size=64"):
        load_model(hf_checkpoints["llama-gqa"], device="cpu")


@pytest.mark.parametrize(
    "index, message",
    [
        ({"weight_map": {"a": 5}}, "tensor 'a' maps to 5"),
        ({"weight_map": ["a"]}, r"weight_map must map tensor names to files, got \['a'\]"),
        ({"weight_map": {}}, "weight_map must map tensor names to files"),
        ({"metadata": {}}, 'no "weight_map" object'),
        ([1, 2], 'no "weight_map" object'),
        ({"weight_map": {"a": "../../../etc/passwd"}}, "tensor 'a' maps to '../../../etc/passwd'"),
        ({"weight_map": {"a": "/etc/passwd"}}, "tensor 'a' maps to '/etc/passwd'"),
        (b"\xff\xfe\xfa", "not JSON: 'utf-8' codec can't decode"),
        (b"{bad", "not JSON"),
    ],
)
def test_malformed_safetensors_index_is_named(hf_checkpoints, tmp_path, index, message):
    d = shutil.copytree(hf_checkpoints["llama-gqa"], tmp_path / "sharded")
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    data = index if isinstance(index, bytes) else json.dumps(index).encode()
    (d / "model.safetensors.index.json").write_bytes(data)
    with pytest.raises(
        CheckpointError, match=rf"malformed safetensors index .*model\.safetensors\.index\.json: {message}"
    ):
        load_model(d, device="cpu")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"fim_orders": 5}', r'"fim_orders" must be a list .*got 5'),
        (b'{"fim_orders": null}', r'"fim_orders" must be a list .*got None'),
        (b'{"fim_orders": ["spm", 3]}', r'"fim_orders" must be a list .*got \[\'spm\', 3\]'),
        (b'["spm"]', "must hold a JSON object"),
        (b"\xff\xfe", "cannot read it"),
        (b"{not json", "cannot read it"),
    ],
)
def test_malformed_kvblend_json_warns_once_and_uses_psm(tmp_path, caplog, content, problem):
    (tmp_path / "kvblend.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="blend.prompt"):
        assert model_fim_order(tmp_path) == "psm"
        assert model_fim_order(tmp_path) == "psm"  # every completion asks: one warning, not one per keystroke
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(tmp_path / "kvblend.json") in warnings[0] and "default FIM order psm" in warnings[0]
    assert re.search(problem, warnings[0]), warnings[0]


def test_well_formed_kvblend_json_is_silent(tmp_path, caplog):
    (tmp_path / "kvblend.json").write_text('{"fim_orders": ["psm", "spm"]}')
    with caplog.at_level(logging.WARNING, logger="blend.prompt"):
        assert model_fim_order(tmp_path) == "spm"
        assert model_fim_order(tmp_path / "absent") == "psm"
    assert not caplog.records


def test_bad_devices_are_named(hf_checkpoints):
    src = hf_checkpoints["llama-gqa"]
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        load_model(src, device="bogus")
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        load_model(src, device="meta")
    gpu = "cuda:99" if torch.cuda.is_available() else "cuda"  # a device this machine does not have
    with pytest.raises(ValueError, match=f"device '{gpu}' is not available: "):
        load_model(src, device=gpu)


def _rewrite_weights(d, edit):
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32])
def test_non_float_weights_are_refused(hf_checkpoints, tmp_path, dtype):
    d = shutil.copytree(hf_checkpoints["llama-gqa"], tmp_path / "ints")
    _rewrite_weights(d, lambda t: t.update({k: (v * 100).to(dtype) for k, v in t.items() if "mlp" in k}))
    with pytest.raises(CheckpointError, match=rf"'model\.layers\.\d\.mlp\.\w+_proj\.weight' .* dtype {dtype}"):
        load_model(d, device="cpu")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "name, index",
    [
        ("model.layers.1.self_attn.k_proj.weight", 7),  # one value in a slice of the fused qkv projection
        ("model.embed_tokens.weight", slice(None)),  # the whole (tied-size) embedding, as the probe did
    ],
)
def test_non_finite_weights_are_refused(hf_checkpoints, tmp_path, bad, name, index):
    d = shutil.copytree(hf_checkpoints["llama-gqa"], tmp_path / "nan")
    _rewrite_weights(d, lambda t: t[name].view(-1).__setitem__(index, bad))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' in model\.safetensors holds NaN or infinite values"):
        load_model(d, device="cpu")


def test_fp32_weights_beyond_fp16_are_refused_in_fp16(hf_checkpoints, tmp_path):
    d = shutil.copytree(hf_checkpoints["llama-gqa"], tmp_path / "big")
    _rewrite_weights(d, lambda t: t["model.norm.weight"].__setitem__(0, 1e6))
    assert load_model(d, device="cpu").model.norm.weight[0] == 1e6  # fine in fp32
    # Finite values whose sum overflows fp32 pass: the cheap sum screen is confirmed element by element.
    _rewrite_weights(d, lambda t: t["model.norm.weight"][:2].fill_(3e38))
    assert torch.equal(load_model(d, device="cpu").model.norm.weight[:2], torch.full((2,), 3e38))
    _rewrite_weights(d, lambda t: t["model.norm.weight"][:2].fill_(1e6))
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' .* overflows torch\.float16 .*1e\+06"):
        load_model(d, device="cpu", dtype=torch.float16)


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8}}, "needs a 'low_freq_factor'"),
        ({"num_attention_heads": 0, "head_dim": None}, "num_attention_heads must be a positive integer, got 0"),
        ({"hidden_size": 10**12}, "more than the"),
        ("device", "device 'bogus'"),
        ("nan", "holds NaN or infinite values"),
    ],
)
def test_cli_prints_one_error_line(hf_checkpoints, tmp_path, capsys, damage, message):
    d = shutil.copytree(hf_checkpoints["llama-gqa"], tmp_path / "model")
    device = "bogus" if damage == "device" else "cpu"
    if damage == "nan":
        _rewrite_weights(d, lambda t: t["model.embed_tokens.weight"].fill_(float("nan")))
    elif isinstance(damage, dict):
        _damaged(hf_checkpoints["llama-gqa"], tmp_path / "damaged", **damage)
        d = tmp_path / "damaged"
    prompt = tmp_path / "prompt.py"
    prompt.write_text("def add(a, b):\n    return")
    argv = ["generate", "--prompt-file", str(prompt), "--model", str(d), "--device", device, "--max-tokens", "2"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvblend: error: ") and message in lines[0], err
