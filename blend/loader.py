"""Load a Hugging Face format checkpoint directory into the engine."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from blend.config import ModelConfig
from blend.fingerprint import model_fingerprint, weights_digest
from blend.model import Transformer
from blend.rope import inv_frequencies
from blend.tokenizer import Tokenizer
from blend.weights import CheckpointError, load_weights, weight_files

log = logging.getLogger(__name__)

# The checkpoint the project trains and ships (issue: the bundled default model).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "kvblend-tiny-py"


@dataclasses.dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    fingerprint: str
    path: Path


def default_dtype(device: torch.device) -> torch.dtype:
    # fp32 on CPU: bf16 matmuls are several times slower there; half precision on GPUs.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    model_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load config.json, *.safetensors and tokenizer.json from `model_dir` (default: the bundled model)."""
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not path.is_dir():
        hint = " (the bundled default model is missing: see models/README)" if model_dir is None else ""
        raise CheckpointError(f"model directory not found: {path}{hint}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_dtype(device)
    cfg = ModelConfig.from_file(path / "config.json")
    files = weight_files(path)
    tokenizer = Tokenizer.from_dir(path, cfg.eos_token_ids)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}")
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device).to(dtype)
    # to_empty left the RoPE buffer uninitialised (and .to(dtype) would round it): recompute in fp32.
    model.inv_freq = inv_frequencies(cfg.rope, cfg.head_dim).to(device)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    load_weights(model, files)
    model.eval().requires_grad_(False)
    fp = model_fingerprint(cfg, weights_digest(files), dtype)
    log.info("loaded %s (%s, %d layers, %s on %s)", path, cfg.architecture, cfg.n_layers, dtype, device)
    return LoadedModel(model, tokenizer, cfg, fp, path)
