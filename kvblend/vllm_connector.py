"""A vLLM KV connector that feeds vLLM the blended context kvblend computed (vLLM v1 connector API).

Configured as
    KVTransferConfig(kv_connector="KvblendConnector", kv_connector_module_path="kvblend.vllm_connector",
                     kv_role="kv_both", kv_connector_extra_config={"kvblend_dir": None or a directory})

A request opts in with `SamplingParams(extra_args={"kv_transfer_params": {"kvblend_key": key.to_str()}})`, the
key of KV our engine put into the `KVHandoff` (see `kvblend.kv_handoff`).

Scheduler side: when the prompt begins with the key's tokens and the KV is there, report the first
`usable` tokens as matched: the key's tokens, at most all prompt tokens but one (vLLM computes at least the
last one, for its logits), cut down to whole blocks. Worker side: before the forward, write those tokens' K/V
into the blocks vLLM allocated, through the attention backend's own cache-update op (so the paged layout of
any backend, CPU or GPU, is the backend's business). vLLM stores keys post-RoPE, like our engine, so the
blended keys go in as they are. A request whose KV went missing, or does not have this model's shape (another
layer count, KV head count or head size: another model's hand-off), reports its blocks as failed loads, and vLLM
recomputes them (the engine sets kv_load_failure_policy="recompute"; vLLM's default fails the request). Nothing
is ever saved from vLLM's side: save hooks are no-ops.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from kvblend.kv_handoff import HandoffKey, KVHandoff

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

PARAM_KEY = "kvblend_key"  # the kv_transfer_params entry naming the hand-off key
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def usable_tokens(key_tokens: int, prompt_tokens: int, block_size: int) -> int:
    """Tokens vLLM may take from the connector: the key's tokens, leaving at least one prompt token to compute,
    in whole blocks (vLLM's scheduler works in blocks)."""
    n = min(key_tokens, prompt_tokens - 1)
    return max(0, n // block_size * block_size)


def slot_mapping(block_ids: list[int], block_size: int, start: int, end: int) -> torch.Tensor:
    """Cache slots of token positions start..end-1 in a request's blocks: [end - start] int64."""
    pos = torch.arange(start, end)
    blocks = torch.as_tensor(block_ids, dtype=torch.int64)
    return blocks[pos // block_size] * block_size + pos % block_size


@dataclasses.dataclass
class _Load:
    req_id: str
    key: str  # HandoffKey.to_str()
    start: int  # first token position to load (tokens before it are in vLLM's own prefix cache)
    end: int
    block_ids: list[int]


@dataclasses.dataclass
class KvblendConnectorMetadata(KVConnectorMetadata):
    loads: list[_Load] = dataclasses.field(default_factory=list)


class KvblendConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.HOST

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._block_size = vllm_config.cache_config.block_size
        self._dtype = vllm_config.model_config.dtype
        mc = vllm_config.model_config
        # the hand-off's k, v: [n_layers, n_kv_heads, n_tokens, head_dim], all of this model's layers and KV heads
        self._kv_shape = (mc.get_num_layers(vllm_config.parallel_config), mc.get_total_num_kv_heads(),
                          mc.get_head_size())  # fmt: skip
        self._handoff = KVHandoff(self._kv_transfer_config.get_from_extra_config("kvblend_dir", None))
        self._pending: dict[str, _Load] = {}  # scheduler: loads waiting for their step
        self._matched: dict[str, HandoffKey] = {}  # scheduler: the key each request was granted tokens for
        self._failed_blocks: set[int] = set()  # worker: blocks whose KV could not be loaded
        self.loaded_tokens = 0  # worker: tokens written so far (tests, stats)

    # -- scheduler side ---------------------------------------------------------------------------

    def _key_of(self, request: Request) -> HandoffKey | None:
        params = request.kv_transfer_params or {}
        if PARAM_KEY not in params:
            return None
        try:
            key = HandoffKey.from_str(params[PARAM_KEY])
        except ValueError as e:
            log.warning("request %s: %s", request.request_id, e)
            return None
        prompt = request.prompt_token_ids or []
        if not key.matches(prompt):
            log.warning("request %s: the prompt does not begin with the tokens of %s", request.request_id, key.to_str())
            return None
        if not self._handoff.has(key):
            log.warning("request %s: no blended KV under %s", request.request_id, key.to_str())
            return None
        return key

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        key = self._key_of(request)
        if key is None:
            self._matched.pop(request.request_id, None)
            return 0, False
        self._matched[request.request_id] = key  # `update_state_after_alloc` must not look again: it may be gone
        n = usable_tokens(key.n_tokens, len(request.prompt_token_ids or []), self._block_size)
        return max(0, n - num_computed_tokens), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        if num_external_tokens <= 0:
            return
        key = self._matched.pop(request.request_id, None)
        assert key is not None, "external tokens were granted to a request without a hand-off key"
        end = usable_tokens(key.n_tokens, len(request.prompt_token_ids or []), self._block_size)
        self._pending[request.request_id] = _Load(request.request_id, key.to_str(), end - num_external_tokens, end, [])

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = KvblendConnectorMetadata()
        for req in scheduler_output.scheduled_new_reqs:
            load = self._pending.pop(req.req_id, None)
            if load is not None:
                load.block_ids = list(req.block_ids[0])
                meta.loads.append(load)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):  # resumed after preemption: blocks are new again
            load = self._pending.pop(req_id, None)
            if load is not None and cached.new_block_ids[i] is not None:
                load.block_ids = list(cached.new_block_ids[i][0])
                meta.loads.append(load)
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._pending.pop(request.request_id, None)
        self._matched.pop(request.request_id, None)
        return False, None

    # -- worker side ------------------------------------------------------------------------------

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvblendConnectorMetadata)
        for load in meta.loads:
            kv = self._handoff.get(HandoffKey.from_str(load.key))
            if kv is None:
                log.warning("request %s: blended KV %s vanished before loading", load.req_id, load.key)
            elif (kv[0].shape[0], kv[0].shape[1], kv[0].shape[3]) != self._kv_shape or kv[0].shape[2] < load.end:
                log.warning("request %s: blended KV %s has shape %s, this model needs [%d, %d, >=%d, %d]: refused",
                            load.req_id, load.key, tuple(kv[0].shape), *self._kv_shape[:2], load.end,
                            self._kv_shape[2])  # fmt: skip
                kv = None
            if kv is None:  # vLLM recomputes the blocks we report
                self._failed_blocks.update(
                    load.block_ids[load.start // self._block_size : -(-load.end // self._block_size)]
                )
                continue
            self._inject(forward_context, load, *kv)

    def _inject(self, forward_context: ForwardContext, load: _Load, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [n_layers, n_kv_heads, n, head_dim] -> every attention layer's paged cache at the load's slots."""
        slots = None
        for name, layer in forward_context.no_compile_layers.items():
            kv_cache = getattr(layer, "kv_cache", None)
            impl = getattr(layer, "impl", None)
            if not isinstance(kv_cache, torch.Tensor) or kv_cache.numel() == 0 or impl is None:
                continue
            m = _LAYER_INDEX.search(name)
            if m is None:
                raise ValueError(f"cannot tell the layer index of attention layer {name!r}")
            i = int(m.group(1))
            if slots is None:
                slots = slot_mapping(load.block_ids, self._block_size, load.start, load.end).to(kv_cache.device)
            # the backend's op takes [n_tokens, n_kv_heads, head_dim]
            key = k[i, :, load.start : load.end].transpose(0, 1).to(device=kv_cache.device, dtype=self._dtype)
            value = v[i, :, load.start : load.end].transpose(0, 1).to(device=kv_cache.device, dtype=self._dtype)
            impl.do_kv_cache_update(layer, key.contiguous(), value.contiguous(), kv_cache, slots)
        self.loaded_tokens += load.end - load.start

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv writes every layer before the forward begins

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # kvblend only supplies KV

    def wait_for_save(self) -> None:
        return

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed
