"""Write a trained Transformer as a Hugging Face Llama checkpoint directory (fp16 safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from blend.config import ModelConfig
from blend.model import Transformer
from blend.weights import hf_state_dict


def hf_config(cfg: ModelConfig, dtype: str = "float16") -> dict:
    """A LlamaForCausalLM config.json that transformers, vLLM and our loader all read."""
    if cfg.architecture != "LlamaForCausalLM" or cfg.rope.rope_type != "default":
        raise ValueError(f"export writes plain Llama configs only, not {cfg.architecture}/{cfg.rope.rope_type}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope.theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids)[0] if cfg.eos_token_ids else None,
        "torch_dtype": dtype,
    }


def export_checkpoint(model: Transformer, tokenizer_json: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.float16) for k, v in hf_state_dict(model).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n")
    (out / "tokenizer.json").write_text(tokenizer_json)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    # Trained on both FIM orders (samples.py); the completer prefers SPM, whose prompts extend by keystroke.
    (out / "kvblend.json").write_text(json.dumps({"fim_orders": ["psm", "spm"]}) + "\n")
