"""`VllmEngine`: vLLM serves the model; kvblend blends the context and hands vLLM its KV.

Per request: our engine (`lm`, the same checkpoint vLLM loads) blends the chunk KV + local prompt into the KV of
the whole prompt; `KVHandoff.put` keeps it; vLLM gets the prompt's token ids with the hand-off key in its
kv_transfer_params, and `kvblend.vllm_connector.KvblendConnector` loads the blended KV into vLLM's paged cache
for all but the last partial block, which vLLM computes itself before decoding. Mode "full" sends the prompt
without a key: vLLM's own full prefill, the baseline.

vLLM runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the hand-off is a reference in memory; with
`handoff_dir` it goes through files instead (for an engine core in another process).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

# vLLM logs to stdout unless told not to configure logging; stdout carries `--json` results and the LSP stream.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

from kvblend.engine import Engine, EngineOutput, EngineRequest, blend_context  # noqa: E402
from kvblend.kv_handoff import KVHandoff  # noqa: E402

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclasses.dataclass(frozen=True)
class VllmOptions:
    dtype: str = "auto"  # auto: the blend's (lm's) dtype; another than lm's is refused (KV vLLM would not compute)
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    gpu_memory_utilization: float = 0.3  # GPUs: leave room for our torch copy of the weights and other tenants
    cpu_kv_cache_gib: int = 2  # CPU backend: VLLM_CPU_KVCACHE_SPACE, unless already set
    block_size: int | None = None  # None: the backend's default
    handoff_dir: str | None = None  # None: hand KV over in memory (vLLM in this process)
    max_num_batched_tokens: int | None = None  # None: max_model_len (a whole prompt prefills in one step)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r} (expected one of {', '.join(_DTYPES)})")


def _vllm_dtype(opts: VllmOptions, lm) -> str:
    """vLLM's dtype: the one our blend computes the handed-over KV in."""
    ours = str(lm.model.dtype).removeprefix("torch.")
    if opts.dtype not in ("auto", ours):
        raise ValueError(f"vLLM dtype {opts.dtype} differs from the model's {ours}: the blended KV would not be "
                         f"what vLLM computes (load the model in {opts.dtype}, or pass dtype={ours!r})")  # fmt: skip
    return ours


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, lm, options: VllmOptions | None = None, **kwargs) -> None:
        super().__init__(lm)
        self.options = opts = options or VllmOptions(**kwargs)
        dtype = _vllm_dtype(opts, lm)  # before vLLM starts: a refusal costs nothing
        self._lock = threading.Lock()  # vLLM's LLM serves one `generate` at a time
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(opts.cpu_kv_cache_gib))
        if opts.handoff_dir is None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the connector must see our memory (read lazily)

        self.handoff = KVHandoff(opts.handoff_dir)
        transfer = KVTransferConfig(
            kv_connector="KvblendConnector",
            kv_connector_module_path="kvblend.vllm_connector",
            kv_role="kv_both",
            kv_connector_extra_config={"kvblend_dir": opts.handoff_dir},
            kv_load_failure_policy="recompute",  # a hand-off that vanished is a miss; vLLM's default fails the request
        )
        max_len = opts.max_model_len or lm.config.max_position_embeddings
        extra = {"block_size": opts.block_size} if opts.block_size else {}
        t = time.perf_counter()
        self.llm = LLM(
            model=str(Path(lm.path)),
            dtype=dtype,
            enforce_eager=True,
            max_model_len=max_len,
            max_num_batched_tokens=opts.max_num_batched_tokens or max_len,
            max_num_seqs=4,
            enable_prefix_caching=False,  # every TTFT measured is a cold prefill or a connector load
            skip_tokenizer_init=True,  # prompts are token ids; we detokenize with our tokenizer
            gpu_memory_utilization=opts.gpu_memory_utilization,
            kv_transfer_config=transfer,
            **extra,
        )
        self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        log.info("vLLM engine up in %.1f s (block size %d)", time.perf_counter() - t, self.block_size)

    def generate(self, request: EngineRequest) -> EngineOutput:
        t0 = time.perf_counter()
        tokens = request.all_tokens
        extra_args, key, prefilled, timings = {}, None, len(tokens), {}
        if request.mode == "blend":
            result = blend_context(self.lm, request, 1)
            timings["blend_s"] = time.perf_counter() - t0
            n = result.cache.n
            key = self.handoff.put(tokens[:n], result.cache.k, result.cache.v)
            extra_args = {"kv_transfer_params": {"kvblend_key": key.to_str()}}
            tail = len(tokens) - (len(tokens) - 1) // self.block_size * self.block_size
            prefilled = int(result.selected.shape[0]) + tail  # recomputed by us, then the tail by vLLM
        params = SamplingParams(
            temperature=0.0,
            max_tokens=request.max_tokens,
            stop_token_ids=sorted(request.stop_ids) or None,
            detokenize=False,
            extra_args=extra_args or None,
        )
        t1 = time.perf_counter()
        try:
            with self._lock:  # two threads in LLM.generate step one engine and take each other's outputs
                out = self.llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
        finally:
            if key is not None:
                self.handoff.drop(key)
        total = time.perf_counter() - t0
        timings["vllm_s"] = total - (t1 - t0)
        ids = list(out.outputs[0].token_ids)
        reason = "max_tokens"
        if ids and ids[-1] in request.stop_ids:
            ids, reason = ids[:-1], "eos"
        ttft = _first_token_s(out)
        ttft = (t1 - t0) + ttft if ttft is not None else total
        return EngineOutput(ids, reason, ttft, total, prefilled, timings)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # already down; nothing else to release
                log.debug("vLLM engine core shutdown failed", exc_info=True)


def _first_token_s(out) -> float | None:
    """Seconds from the request's arrival in vLLM to its first token, when vLLM recorded it (stats on)."""
    ttft = getattr(getattr(out, "metrics", None), "first_token_latency", None)
    return float(ttft) if ttft else None
