"""Load a Hugging Face format checkpoint directory into the engine."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from blend.config import ConfigError, ModelConfig
from blend.fingerprint import model_fingerprint, weights_digest
from blend.model import Transformer
from blend.rope import inv_frequencies
from blend.tokenizer import Tokenizer
from blend.weights import CheckpointError, load_weights, weight_files

log = logging.getLogger(__name__)

# The checkpoint the project trains and ships (issue: the bundled default model).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "kvblend-tiny-py"
# Device types the engine runs on (Triton kernels on cuda, their torch references elsewhere).
DEVICE_TYPES = ("cpu", "cuda", "mps")
# Memory assumed where the OS does not say how much RAM there is: what no model kvblend serves comes near.
FALLBACK_MEMORY_BYTES = 1 << 40


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` (default: cuda when available) as a usable torch device, or a ValueError saying why not."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {str(device)!r} (expected one of {', '.join(DEVICE_TYPES)}, or cuda:N)"
        ) from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {str(device)!r}: kvblend runs on {', '.join(DEVICE_TYPES)}")
    n_gpus = torch.cuda.device_count() if dev.type == "cuda" and torch.cuda.is_available() else 0
    if n_gpus and dev.index is not None and dev.index >= n_gpus:
        raise ValueError(f"device {str(device)!r} is not available: {n_gpus} CUDA device(s) on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available: this torch or machine has no MPS support")
    try:
        torch.empty(0, device=dev)  # CPU-only torch raises AssertionError, a machine without the GPU RuntimeError
    except (RuntimeError, AssertionError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"device {str(device)!r} is not available: {reason}") from None
    return dev


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: the GPU's total, else the machine's RAM (`FALLBACK_MEMORY_BYTES` if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return FALLBACK_MEMORY_BYTES


def check_fits(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before allocating, a config whose parameters alone need more memory than `device` has."""
    need, have = cfg.n_params() * dtype.itemsize, device_memory(device)
    if need > have:
        raise ConfigError(
            f"config.json describes a model of {cfg.n_params():,} parameters ({need / 2**30:,.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')}), more than the {have / 2**30:,.1f} GiB of memory on {device} "
            f"(vocab_size={cfg.vocab_size}, hidden_size={cfg.dim}, intermediate_size={cfg.intermediate_size}, "
            f"num_hidden_layers={cfg.n_layers})"
        )


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
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    cfg = ModelConfig.from_file(path / "config.json")
    check_fits(cfg, dtype, device)
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
