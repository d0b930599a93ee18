"""Model fingerprints: what every stored KV chunk and capsule is keyed by.

fingerprint = hash(engine version, config, weights digest, dtype). KV computed under one fingerprint is
never served under another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from blend.config import ModelConfig

# Bump when a change to the engine or its kernels changes the KV it produces.
ENGINE_VERSION = "kvblend-engine-1"


def weights_digest(files: list[Path]) -> str:
    """blake2b over the bytes of the weight files (streamed; ~1 s per GB here)."""
    h = hashlib.blake2b(digest_size=16)
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def model_fingerprint(cfg: ModelConfig, weights: str, dtype: torch.dtype) -> str:
    payload = json.dumps(
        {"engine": ENGINE_VERSION, "config": cfg.to_dict(), "weights": weights, "dtype": str(dtype)},
        sort_keys=True,
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
