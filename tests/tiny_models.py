"""Random-weight Llama / Qwen2 / Mistral checkpoints built offline with transformers (the test oracle)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "<|repo_name|>"]

_BASE = dict(
    initializer_range=0.15,
    vocab_size=320,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=3,
    max_position_embeddings=512,
)

TINY_CONFIGS = {
    # GQA: 4 query heads share 2 KV heads.
    "llama-gqa": ("llama", dict(_BASE, num_attention_heads=4, num_key_value_heads=2)),
    # MQA with tied embeddings and llama3 rope scaling (small original context so scaling matters).
    "llama-mqa-tied-llama3": (
        "llama",
        dict(
            _BASE,
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    # head_dim 24 (not a power of two, not hidden/heads), linear rope scaling, attention bias.
    "llama-hd24-linear": (
        "llama",
        dict(
            _BASE,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            attention_bias=True,
            rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0),
        ),
    ),
    # Qwen2: q/k/v bias, untied.
    "qwen2": ("qwen2", dict(_BASE, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    # Mistral with a short sliding window so the window actually masks.
    "mistral-window": ("mistral", dict(_BASE, num_attention_heads=4, num_key_value_heads=2, sliding_window=24)),
}


def tiny_tokenizer(vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE trained on a few lines of code, with the Qwen2.5-Coder special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.path.join('a', 'b'))\n"] * 20
    tok.train_from_iterator(corpus, trainer)
    return tok


def build_hf_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    import transformers

    model_type, kwargs = TINY_CONFIGS[name]
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[model_type]
    tok = tiny_tokenizer(kwargs["vocab_size"])
    eos = tok.token_to_id("<|endoftext|>")
    config = config_cls(**kwargs, bos_token_id=None, eos_token_id=eos, pad_token_id=None)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # biases and norm gains away from 0 / 1 so every term is exercised
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in pname else 0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return out


def hf_model(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
