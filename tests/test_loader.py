"""Checkpoint loading: the happy paths (sharded, tied) and clear errors for bad directories."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from blend.config import ConfigError, ModelConfig
from blend.loader import load_model
from blend.weights import CheckpointError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_sharded_checkpoint_loads_identically(hf_checkpoints, tmp_path):
    src = hf_checkpoints["llama-gqa"]
    dst = _copy(src, tmp_path / "sharded")
    tensors = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / fname))
        weight_map.update({n: fname for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = load_model(src, device="cpu"), load_model(dst, device="cpu")
    toks = torch.arange(5, 25)
    assert torch.equal(a.model.prefill(toks, a.model.new_cache()), b.model.prefill(toks, b.model.new_cache()))


def test_missing_files_are_named(hf_checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model(tmp_path / "nope")
    d = _copy(hf_checkpoints["qwen2"], tmp_path / "no-weights")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(d)
    d = _copy(hf_checkpoints["qwen2"], tmp_path / "no-tok")
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        load_model(d)
    d = _copy(hf_checkpoints["qwen2"], tmp_path / "no-config")
    (d / "config.json").unlink()
    with pytest.raises(ConfigError, match="missing config.json"):
        load_model(d)


def test_unsupported_architecture_is_named(hf_checkpoints, tmp_path):
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / "gpt2")
    _edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConfigError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_model(d)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_scaling_is_named(hf_checkpoints, tmp_path, rope_type):
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / rope_type)
    _edit_config(d, rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ConfigError, match=f"unsupported rope scaling '{rope_type}'"):
        load_model(d)


def test_legacy_rope_fields_are_read():
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "rope_theta": 500000.0,
        "rope_scaling": {"type": "linear", "factor": 4.0},
    }
    cfg = ModelConfig.from_hf(hf)
    assert (cfg.rope.rope_type, cfg.rope.theta, cfg.rope.factor) == ("linear", 500000.0, 4.0)
    assert cfg.n_kv_heads == 2 and cfg.head_dim == 4


def test_shape_mismatch_names_tensor_and_shapes(hf_checkpoints, tmp_path):
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / "bad-shape")
    _edit_config(d, intermediate_size=96)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for 'model.layers.0.mlp.(gate|up|down)_proj.weight'.*\("
    ):
        load_model(d)


def test_malformed_config_and_weights(hf_checkpoints, tmp_path):
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / "garbage")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(d)
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / "garbage-weights")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(d)
    d = _copy(hf_checkpoints["llama-gqa"], tmp_path / "missing-key")
    _edit_config(d, num_hidden_layers=None)
    with pytest.raises(ConfigError, match="malformed size field"):
        load_model(d)


def test_fingerprint_tracks_weights_and_dtype(hf_checkpoints, tmp_path):
    src = hf_checkpoints["llama-gqa"]
    a = load_model(src, device="cpu")
    assert load_model(src, device="cpu").fingerprint == a.fingerprint
    assert load_model(src, device="cpu", dtype=torch.float64).fingerprint != a.fingerprint
    d = _copy(src, tmp_path / "changed")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, str(d / "model.safetensors"))
    assert load_model(d, device="cpu").fingerprint != a.fingerprint


def test_tied_embeddings_share_storage(hf_checkpoints):
    lm = load_model(hf_checkpoints["llama-mqa-tied-llama3"], device="cpu")
    assert lm.model.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert lm.tokenizer.eos_ids == (lm.tokenizer.token_id("<|endoftext|>"),)
