"""Read and write Hugging Face safetensors checkpoints (single file or sharded with an index).

Our Transformer fuses q/k/v and gate/up projections; HF checkpoints keep them apart. `FUSED` says which
rows of which fused parameter each HF tensor fills, so loading and exporting are one table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from blend.config import ModelConfig
from blend.model import Transformer

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds tensors that do not fit the config."""


def fused_rows(cfg: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """HF module suffix -> (our fused module suffix, first row, end row)."""
    q, kv, inter = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.intermediate_size
    return {
        "self_attn.q_proj": ("self_attn.qkv_proj", 0, q),
        "self_attn.k_proj": ("self_attn.qkv_proj", q, q + kv),
        "self_attn.v_proj": ("self_attn.qkv_proj", q + kv, q + 2 * kv),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0, inter),
        "mlp.up_proj": ("mlp.gate_up_proj", inter, 2 * inter),
    }


def hf_to_ours(hf_name: str, cfg: ModelConfig) -> tuple[str, int | None, int | None]:
    """'model.layers.3.self_attn.k_proj.weight' -> ('layers.3.self_attn.qkv_proj.weight', rows from, rows to)."""
    name = hf_name.removeprefix("model.")
    for hf_mod, (ours, r0, r1) in fused_rows(cfg).items():
        marker = f".{hf_mod}."
        if marker in name:
            return name.replace(marker, f".{ours}."), r0, r1
    return name, None, None


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: `model.safetensors`, or the shards its index names."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = [model_dir / name for name in _index_shards(index)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"safetensors shards named in {index} are missing: {', '.join(missing)}")
        return files
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise CheckpointError(f"{model_dir} holds only pickle weights (*.bin/*.pt); convert them to safetensors")
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")


def _index_shards(index: Path) -> list[str]:
    """The shard file names an index's {"weight_map": {tensor: file}} names, sorted and distinct."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read safetensors index {index}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"malformed safetensors index {index}: not JSON: {e}") from None
    if not isinstance(data, dict) or "weight_map" not in data:
        raise CheckpointError(f'malformed safetensors index {index}: no "weight_map" object')
    weight_map = data["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"malformed safetensors index {index}: weight_map must map tensor names to files, got {weight_map!r:.80}"
        )
    names = set()
    for tensor, name in weight_map.items():
        # A plain relative name: an index must not point at files outside the model directory.
        if not isinstance(name, str) or not name or PurePosixPath(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"malformed safetensors index {index}: tensor {tensor!r} maps to {name!r}")
        names.add(name)
    return sorted(names)


def load_weights(model: Transformer, files: list[Path]) -> None:
    """Copy every tensor of `files` into `model`, checking names, shapes, dtypes and values (finite after the
    cast to the model dtype)."""
    cfg = model.cfg
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = {name: tuple(p.shape) for name, p in hf_state_shapes(model).items()}
    loaded: set[str] = set()
    for path in files:
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
        # NaN/inf weights (or fp32 weights beyond the fp16 range) would load silently and generate nothing. One sum
        # per tensor screens for them (any NaN/inf makes it non-finite; ~100x cheaper than isfinite().all() here) and
        # is read once per file, so a GPU syncs once; a non-finite sum is confirmed element-wise (it may overflow).
        sums: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, target view, fp32 sum)
        for hf_name, tensor in tensors.items():
            key = hf_name.removeprefix("model.")
            if key not in expected:
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # some exports save the RoPE buffer; we compute it
                raise CheckpointError(f"unexpected tensor {hf_name!r} in {path.name}")
            if tuple(tensor.shape) != expected[key]:
                raise CheckpointError(
                    f"shape mismatch for {hf_name!r}: checkpoint has {tuple(tensor.shape)}, "
                    f"config expects {expected[key]}"
                )
            if not tensor.dtype.is_floating_point:
                raise CheckpointError(
                    f"tensor {hf_name!r} in {path.name} has dtype {tensor.dtype}: kvblend loads floating-point "
                    "weights only (quantised checkpoints are not supported)"
                )
            ours, r0, r1 = hf_to_ours(hf_name, cfg)
            with torch.no_grad():
                target = params[ours] if r0 is None else params[ours][r0:r1]
                target.copy_(tensor.to(target.dtype))
                sums.append((hf_name, target, target.sum(dtype=torch.float32)))
            loaded.add(key)
        if sums and not torch.isfinite(torch.stack([total for *_, total in sums])).all():
            with torch.no_grad():  # the views were made under no_grad
                for name, target, total in sums:
                    if not torch.isfinite(total) and not torch.isfinite(target).all():
                        raise _non_finite(name, tensors[name], path, target.dtype)
    tied = {"lm_head.weight", "embed_tokens.weight"}
    if cfg.tie_embeddings and loaded & tied:  # one tensor serves both
        loaded |= tied
    missing = sorted(set(expected) - loaded)
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    log.debug("loaded %d tensors from %d file(s)", len(loaded), len(files))


def _non_finite(hf_name: str, tensor: torch.Tensor, path: Path, dtype: torch.dtype) -> CheckpointError:
    """The error for a tensor not finite in the model's `dtype`: NaN/inf in the file, or values too large for it."""
    if not torch.isfinite(tensor).all():
        return CheckpointError(f"tensor {hf_name!r} in {path.name} holds NaN or infinite values")
    return CheckpointError(
        f"tensor {hf_name!r} in {path.name} overflows {dtype} (largest magnitude {tensor.abs().max().item():.4g}); "
        "load the model in float32"
    )


def hf_state_shapes(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's tensors under HF names (without "model."), fused parameters split into views."""
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        split = False
        for hf_mod, (ours, r0, r1) in fused_rows(cfg).items():
            if f".{ours}." in name:
                out[name.replace(f".{ours}.", f".{hf_mod}.")] = p[r0:r1]
                split = True
        if not split:
            out[name] = p
    return out


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """A transformers-compatible state dict (contiguous copies, "model." prefixes, tied head omitted)."""
    out = {}
    for name, t in hf_state_shapes(model).items():
        if name == "lm_head.weight" and model.cfg.tie_embeddings:
            continue
        out[name if name.startswith("lm_head") else f"model.{name}"] = t.detach().contiguous().clone()
    return out
