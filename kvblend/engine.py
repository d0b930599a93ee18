"""Engines: what turns (context chunks, local prompt) into completion tokens.

An engine takes the blended-context request the Completer builds (precomputed chunk KV + the local FIM
prompt) and returns the generated tokens with their time to first token. Two implementations:

- `TorchEngine` (reference, "torch"): our own Llama engine; blends with `blend.cacheblend` and decodes on the
  explicit KV cache.
- `VllmEngine` ("vllm", `kvblend.engine_vllm`): the same blend on the same weights, handed to vLLM through the
  kvblend KV connector; vLLM computes the last few tokens and decodes. Needs the `vllm` package.

`make_engine(name, ...)` picks one and raises on unknown names.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time

import torch

from blend import cacheblend
from blend.cacheblend import BlendConfig, ChunkKV
from blend.loader import LoadedModel

log = logging.getLogger(__name__)

ENGINES = ("torch", "vllm")


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    """One request: the context as precomputed chunk KV, then the local prompt, then up to `max_tokens`."""

    chunks: list[ChunkKV]  # context chunks in prompt order; their tokens concatenated open the prompt
    prompt: list[int]  # the local prompt (always computed)
    max_tokens: int = 32
    stop_ids: frozenset[int] = frozenset()  # generation ends before any of these (not returned)
    mode: str = "blend"  # blend | full: blend the chunk KV, or prefill the whole token sequence
    recompute_ratio: float = 0.15  # blend only: fraction of context tokens recomputed (1.0 = exact)

    def __post_init__(self) -> None:
        if self.mode not in ("blend", "full"):
            raise ValueError(f"unknown mode {self.mode!r} (expected blend or full)")
        if not self.prompt:
            raise ValueError("the local prompt needs at least one token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def context_tokens(self) -> list[int]:
        return [t for c in self.chunks for t in c.tokens.tolist()]

    @property
    def all_tokens(self) -> list[int]:
        """The identical token sequence every mode runs on: context, then the local prompt."""
        return self.context_tokens + list(self.prompt)


@dataclasses.dataclass
class EngineOutput:
    tokens: list[int]  # greedy tokens (stop token excluded)
    stop_reason: str  # eos | max_tokens
    ttft_s: float  # request in -> first token chosen (blend + KV hand-over + prefill of the rest)
    total_s: float
    prefilled: int  # tokens run through a model for this request (blend: those recomputed)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


class Engine(abc.ABC):
    """Contract: `generate` is greedy and deterministic; for mode "full" and for mode "blend" with
    recompute_ratio 1.0 it returns the tokens of a full prefill of `request.all_tokens` (up to the engine's
    floating-point differences). `lm` is the torch model the blend runs on: the engine's own weights."""

    name: str

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> EngineOutput:
        """Complete `request` greedily."""

    def close(self) -> None:
        """Release the engine's resources (processes, memory); nothing to release by default."""
        return None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def blend_context(lm: LoadedModel, request: EngineRequest, extra_capacity: int) -> cacheblend.BlendResult:
    """The KV of `request.all_tokens` by the request's mode, on our engine (keys post-RoPE, positions 0..n-1)."""
    model = lm.model
    prompt = torch.tensor(request.prompt, device=model.device)
    if request.mode == "full" or not request.chunks:
        return cacheblend.full_prefill(model, request.chunks, prompt, extra_capacity)
    return cacheblend.blend(model, request.chunks, prompt, BlendConfig(recompute_ratio=request.recompute_ratio),
                            extra_capacity)  # fmt: skip


class TorchEngine(Engine):
    """The reference engine: blend (or full prefill) and greedy decoding on our own Llama forward."""

    name = "torch"

    @torch.inference_mode()
    def generate(self, request: EngineRequest) -> EngineOutput:
        t0 = time.perf_counter()
        result = blend_context(self.lm, request, request.max_tokens + 1)
        prefilled = int(result.selected.shape[0])
        logits, out, reason = result.logits, [], "max_tokens"
        ttft = None
        while len(out) < request.max_tokens:
            token = int(torch.argmax(logits))
            if ttft is None:
                ttft = time.perf_counter() - t0
            if token in request.stop_ids:
                reason = "eos"
                break
            out.append(token)
            if len(out) < request.max_tokens:
                logits = self.lm.model.decode(token, result.cache)
        total = time.perf_counter() - t0
        return EngineOutput(out, reason, ttft or total, total, prefilled, {"blend_s": result.timings["total_s"]})


def make_engine(name: str, lm: LoadedModel, **options) -> Engine:
    """The engine called `name` ("torch" or "vllm") over the loaded model `lm`; `options` go to its constructor."""
    if name == "torch":
        if options:
            raise ValueError(f"the torch engine takes no options, got {sorted(options)}")
        return TorchEngine(lm)
    if name == "vllm":
        try:
            from kvblend.engine_vllm import VllmEngine
        except ImportError as e:  # the optional dependency: say how to get it
            raise ValueError(f"engine 'vllm' needs the vllm package (see README, 'vLLM'): {e}") from None
        return VllmEngine(lm, **options)
    raise ValueError(f"unknown engine {name!r} (expected one of {', '.join(ENGINES)})")
