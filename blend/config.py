"""Model configuration read from a Hugging Face `config.json`.

One dataclass describes every Llama-family checkpoint the engine runs (Llama, Qwen2, Mistral).
Fields that vary by architecture (biases, sliding windows, tied embeddings) are explicit here so the
model code never looks at the raw HF dictionary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# Architectures whose weights and forward pass the engine implements exactly.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# RoPE variants whose frequencies depend only on the position (so blending can re-rotate exactly).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A checkpoint's config.json describes something the engine cannot run."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0  # linear / llama3 position scaling
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope scaling {self.rope_type!r}: kvblend supports {', '.join(SUPPORTED_ROPE_TYPES)}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str = "LlamaForCausalLM"
    vocab_size: int = 8192
    dim: int = 256  # hidden size
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # < n_heads is GQA, 1 is MQA
    head_dim: int = 64  # may differ from dim // n_heads (and need not be a power of two)
    intermediate_size: int = 768
    norm_eps: float = 1e-6
    rope: RopeConfig = dataclasses.field(default_factory=RopeConfig)
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen2 and Llama's attention_bias
    o_bias: bool = False  # Llama's attention_bias also covers o_proj
    mlp_bias: bool = False
    tie_embeddings: bool = False
    # Per-layer sliding attention window (None = full causal attention), as in Mistral / Qwen2.
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.n_layers)
        if len(self.sliding_windows) != self.n_layers:
            raise ConfigError(f"{len(self.sliding_windows)} sliding windows given for {self.n_layers} layers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Translate a Hugging Face config dictionary, refusing what the engine cannot run exactly."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(hf.get("model_type", ""), "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {arch or hf.get('model_type')!r}: "
                f"kvblend supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"unsupported activation {act!r}: only silu (SwiGLU) is implemented")
        try:
            n_heads = int(hf["num_attention_heads"])
            dim = int(hf["hidden_size"])
            n_layers = int(hf["num_hidden_layers"])
            fields = dict(
                architecture=arch,
                vocab_size=int(hf["vocab_size"]),
                dim=dim,
                n_layers=n_layers,
                n_heads=n_heads,
                n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                head_dim=int(hf.get("head_dim") or dim // n_heads),
                intermediate_size=int(hf["intermediate_size"]),
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks required field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.json has a malformed size field: {e}") from None
        fields["rope"] = _rope_from_hf(hf, fields["max_position_embeddings"])
        if arch == "Qwen2ForCausalLM":
            fields["qkv_bias"] = True
        else:
            fields["qkv_bias"] = fields["o_bias"] = bool(hf.get("attention_bias", False))
        fields["mlp_bias"] = bool(hf.get("mlp_bias", False))
        fields["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
        fields["sliding_windows"] = _sliding_windows_from_hf(hf, arch, n_layers)
        fields["bos_token_id"] = hf.get("bos_token_id")
        eos = hf.get("eos_token_id")
        fields["eos_token_ids"] = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return cls(**fields)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"missing config.json: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config.json is not valid JSON: {path}: {e}") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"config.json must hold an object: {path}")
        return cls.from_hf(hf)


_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def _rope_from_hf(hf: dict[str, Any], max_pos: int) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (theta inside); older checkpoints `rope_theta` + `rope_scaling`.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if "layer_types" in hf and params and all(isinstance(v, dict) for v in params.values()):
        raise ConfigError("per-layer rope parameters are not supported")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) not in (None, 1.0):
        raise ConfigError("partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"unsupported rope scaling {rope_type!r}: kvblend supports {', '.join(SUPPORTED_ROPE_TYPES)}")
    kw: dict[str, Any] = {"rope_type": rope_type, "theta": theta}
    if rope_type in ("linear", "llama3"):
        if "factor" not in params:
            raise ConfigError(f"rope scaling {rope_type!r} needs a 'factor'")
        kw["factor"] = float(params["factor"])
    if rope_type == "llama3":
        kw["low_freq_factor"] = float(params["low_freq_factor"])
        kw["high_freq_factor"] = float(params["high_freq_factor"])
        kw["original_max_position_embeddings"] = int(params.get("original_max_position_embeddings", max_pos))
    return RopeConfig(**kw)


def _sliding_windows_from_hf(hf: dict[str, Any], arch: str, n_layers: int) -> tuple[int | None, ...]:
    window = hf.get("sliding_window")
    if arch == "MistralForCausalLM":
        return (int(window) if window else None,) * n_layers
    if arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window") and window:
        layer_types = hf.get("layer_types")
        if not layer_types:
            first = int(hf.get("max_window_layers", n_layers))
            layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
        return tuple(int(window) if t == "sliding_attention" else None for t in layer_types)
    return (None,) * n_layers
