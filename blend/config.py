"""Model configuration read from a Hugging Face `config.json`.

One dataclass describes every Llama-family checkpoint the engine runs (Llama, Qwen2, Mistral).
Fields that vary by architecture (biases, sliding windows, tied embeddings) are explicit here so the
model code never looks at the raw HF dictionary.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            # llama3 smooths between the two wavelengths: equal or swapped factors divide by zero or invert it.
            raise ConfigError(
                f"rope scaling 'llama3' needs high_freq_factor > low_freq_factor, "
                f"got {self.high_freq_factor} and {self.low_freq_factor}"
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
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
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

    def n_params(self) -> int:
        """Parameters of the model this config describes (what `blend.model.Transformer` allocates)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        d, inter = self.dim, self.intermediate_size
        attn = d * (q + 2 * kv) + q * d + (q + 2 * kv) * self.qkv_bias + d * self.o_bias
        mlp = 3 * d * inter + (2 * inter + d) * self.mlp_bias
        per_layer = attn + mlp + 2 * d  # + two RMSNorm gains
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layers * per_layer + d  # + the final norm

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Translate a Hugging Face config dictionary, refusing what the engine cannot run exactly."""
        archs, model_type = hf.get("architectures") or [], hf.get("model_type") or ""
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"config.json: architectures must be a list of class names, got {archs!r:.80}")
        if not isinstance(model_type, str):
            raise ConfigError(f"config.json: model_type must be a string, got {model_type!r:.80}")
        arch = archs[0] if archs else _ARCH_BY_MODEL_TYPE.get(model_type, "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {arch or hf.get('model_type')!r}: "
                f"kvblend supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"unsupported activation {act!r}: only silu (SwiGLU) is implemented")
        n_heads = _int_field(hf, "num_attention_heads")
        dim = _int_field(hf, "hidden_size")
        n_layers = _int_field(hf, "num_hidden_layers")
        head_dim = _int_field(hf, "head_dim", None)
        if head_dim is None:
            if dim % n_heads:
                raise ConfigError(
                    f"config.json gives no head_dim and hidden_size={dim} is not divisible by "
                    f"num_attention_heads={n_heads}"
                )
            head_dim = dim // n_heads
        fields = dict(
            architecture=arch,
            vocab_size=_int_field(hf, "vocab_size"),
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=_int_field(hf, "num_key_value_heads", n_heads),
            head_dim=head_dim,
            intermediate_size=_int_field(hf, "intermediate_size"),
            norm_eps=_float_field(hf, "rms_norm_eps", 1e-6),
            max_position_embeddings=_int_field(hf, "max_position_embeddings", 4096),
        )
        fields["rope"] = _rope_from_hf(hf, fields["max_position_embeddings"])
        if arch == "Qwen2ForCausalLM":
            fields["qkv_bias"] = True
        else:
            fields["qkv_bias"] = fields["o_bias"] = _bool_field(hf, "attention_bias")
        fields["mlp_bias"] = _bool_field(hf, "mlp_bias")
        fields["tie_embeddings"] = _bool_field(hf, "tie_word_embeddings")
        fields["sliding_windows"] = _sliding_windows_from_hf(hf, arch, n_layers)
        fields["bos_token_id"] = _token_id("bos_token_id", hf.get("bos_token_id"))
        eos = hf.get("eos_token_id")
        eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
        fields["eos_token_ids"] = tuple(_token_id("eos_token_id", i) for i in eos)
        return cls(**fields)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"missing config.json: {path}") from None
        except OSError as e:  # a directory, no permission
            raise ConfigError(f"cannot read config.json: {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config.json is not valid JSON: {path}: {e}") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"config.json must hold an object: {path}")
        return cls.from_hf(hf)


_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


_REQUIRED = object()  # default of a field config.json must give


def _given(hf: dict[str, Any], key: str, default: Any, where: str) -> Any:
    """hf[key]; `default` itself when the field is absent or null and has one; ConfigError when it is required."""
    value = hf.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if key not in hf:
        raise ConfigError(f"config.json lacks required field {where + key!r}")
    return value


def _int_field(hf: dict[str, Any], key: str, default: Any = _REQUIRED, where: str = "") -> Any:
    """hf[key] as a positive integer, or `default` when absent or null. `where` prefixes the name in errors."""
    value = _given(hf, key, default, where)
    if value is default:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4096.0: some exporters write sizes as floats
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"config.json has a malformed size field: {where}{key} must be a positive integer, got {value!r}"
        )
    return value


def _float_field(hf: dict[str, Any], key: str, default: Any = _REQUIRED, where: str = "") -> Any:
    """hf[key] as a positive finite number, or `default` when absent or null."""
    value = _given(hf, key, default, where)
    if value is default:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"config.json: {where}{key} must be a positive number, got {value!r}")
    return float(value)


def _bool_field(hf: dict[str, Any], key: str) -> bool:
    """hf[key] as a bool (false when absent or null). A string such as "false" is refused: it is truthy, and a
    misread flag (tied embeddings, biases) would load wrong weights silently."""
    value = hf.get(key)
    if value is None:
        return False
    if not isinstance(value, bool) and value not in (0, 1):
        raise ConfigError(f"config.json: {key} must be true or false, got {value!r}")
    return bool(value)


def _token_id(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config.json: {key} must be a token id (an integer >= 0) or a list of them, got {value!r}")
    return value


def _rope_from_hf(hf: dict[str, Any], max_pos: int) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (theta inside); older checkpoints `rope_theta` + `rope_scaling`.
    # Where both are given, `rope_scaling` wins, as in transformers (a scaling added to a transformers 5 config).
    key = "rope_parameters" if hf.get("rope_parameters") and not hf.get("rope_scaling") else "rope_scaling"
    params = hf.get(key) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: {key} must be an object or null, got {params!r}")
    if "layer_types" in hf and params and all(isinstance(v, dict) for v in params.values()):
        raise ConfigError("per-layer rope parameters are not supported")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if not isinstance(rope_type, str):
        raise ConfigError(f"config.json: {key}.rope_type must be a string, got {rope_type!r}")
    if params.get("rope_theta") is not None:
        theta = _float_field(params, "rope_theta", where=f"{key}.")
    else:
        theta = _float_field(hf, "rope_theta", 10000.0)
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) not in (None, 1.0):
        raise ConfigError("partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"unsupported rope scaling {rope_type!r}: kvblend supports {', '.join(SUPPORTED_ROPE_TYPES)}")
    kw: dict[str, Any] = {"rope_type": rope_type, "theta": theta}
    needs = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}.get(rope_type, ())
    for name in needs:
        if name not in params:
            raise ConfigError(f"rope scaling {rope_type!r} needs a {name!r} (config.json {key})")
        kw[name] = _float_field(params, name, where=f"{key}.")
    if rope_type == "llama3":
        kw["original_max_position_embeddings"] = _int_field(
            params, "original_max_position_embeddings", max_pos, where=f"{key}."
        )
    return RopeConfig(**kw)


def _sliding_windows_from_hf(hf: dict[str, Any], arch: str, n_layers: int) -> tuple[int | None, ...]:
    uses_window = arch == "MistralForCausalLM" or (arch == "Qwen2ForCausalLM" and _bool_field(hf, "use_sliding_window"))
    if not uses_window or hf.get("sliding_window") is None:
        return (None,) * n_layers  # null: full attention (Mistral v0.2+); Llama ignores the field
    window = hf["sliding_window"]
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"config.json: sliding_window must be a positive integer or null, got {window!r}")
    if arch == "MistralForCausalLM":
        return (window,) * n_layers
    layer_types = hf.get("layer_types")
    if not layer_types:
        first = hf.get("max_window_layers", n_layers)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ConfigError(f"config.json: max_window_layers must be an integer >= 0, got {first!r}")
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    kinds = ("sliding_attention", "full_attention")
    if not isinstance(layer_types, list) or not all(t in kinds for t in layer_types):
        raise ConfigError(f"config.json: layer_types must be a list of {' / '.join(kinds)}, got {layer_types!r}")
    return tuple(window if t == "sliding_attention" else None for t in layer_types)
