"""A capsule: the full execution state of an editing session at a committed boundary.

Token ids, the KV of exactly those tokens, the logits of the last one, the sampler's RNG state, the
document it belongs to (uri, version, text hash) and the model fingerprint. `snapshot` copies a live cache
into a capsule once (off the request path: after the completion went out); `restore` hands back a writable
cache in O(1) that shares the capsule's storage copy-on-write (see `capsule.cow`), so a capsule never
changes after it is made, however its restored sessions go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time

import torch

from blend.kv_cache import KVCache
from blend.model import Transformer
from blend.sampling import Sampler, SamplingParams
from capsule.config import SPARE_TOKENS
from capsule.cow import SharedBuffer, SharedPrefixCache

log = logging.getLogger(__name__)

# Bump when a field is added or changes meaning; files of another version are refused (capsule.serde).
FORMAT_VERSION = 1


class CapsuleError(ValueError):
    """A capsule cannot be used here (another model's fingerprint, a bad boundary, an unknown id)."""


def new_id() -> str:
    return secrets.token_hex(8)


def text_hash(text: str) -> str:
    """The document hash capsules are matched by on undo (blake2b-128 of the UTF-8 text)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclasses.dataclass(eq=False)
class Capsule:
    """Immutable by contract: nothing writes into `kv`, `tokens` or `last_logits` after `snapshot`."""

    tokens: list[int]  # the n token ids the KV holds, in slot order
    kv: SharedBuffer  # k, v: [n_layers, n_kv_heads, n, head_dim] (+ a spare tail), positions: [n]
    last_logits: torch.Tensor  # [vocab] fp32: the logits after tokens[-1] (the next token needs no prefill)
    fingerprint: str  # the model that computed the KV; restore refuses any other
    sampler_state: torch.Tensor | None = None  # torch.Generator state (uint8 [5056] on CPU)
    sampling: dict | None = None  # the SamplingParams the session used (temperature, top_p, seed)
    uri: str = ""
    doc_version: int | None = None
    text_hash: str = ""  # `text_hash(document text)` at the boundary
    parent: str | None = None  # the capsule this session resumed from
    created: float = dataclasses.field(default_factory=time.time)
    id: str = dataclasses.field(default_factory=new_id)
    version: int = FORMAT_VERSION
    # How the KV was computed beyond the model (e.g. "exact", "blend:0.15"): KV of the same tokens differs
    # between recipes, so a search for one never returns another's capsule. "" (files written before): none.
    recipe: str = ""

    def __post_init__(self) -> None:
        assert len(self.tokens) == self.kv.n, (len(self.tokens), self.kv.n)

    @property
    def n(self) -> int:
        return self.kv.n

    @property
    def bytes(self) -> int:
        """Bytes it holds in memory: KV buffer (spare tail included), positions, logits, ids, RNG state."""
        extra = self.sampler_state.nbytes if self.sampler_state is not None else 0
        return self.kv.nbytes + self.last_logits.nbytes + 8 * len(self.tokens) + extra

    def info(self) -> dict:
        """JSON-able metadata (what `list` shows; no tensors)."""
        return {
            "id": self.id, "uri": self.uri, "doc_version": self.doc_version, "text_hash": self.text_hash,
            "n_tokens": self.n, "fingerprint": self.fingerprint, "parent": self.parent, "created": self.created,
            "bytes": self.bytes, "version": self.version, "recipe": self.recipe,
        }  # fmt: skip


@dataclasses.dataclass
class RestoredState:
    cache: KVCache  # writable; shares the capsule's KV copy-on-write (a SharedPrefixCache)
    tokens: list[int]  # a private copy of the restored token ids
    last_logits: torch.Tensor | None  # [vocab]; None when restored to fewer tokens than the capsule holds
    sampler_state: torch.Tensor | None
    capsule_id: str
    sampling: dict | None = None

    def sampler(self, params: SamplingParams | None = None) -> Sampler:
        """A sampler that continues the capsule's random stream (params default to the capsule's)."""
        if params is None:
            params = SamplingParams(**self.sampling) if self.sampling else SamplingParams()
        s = Sampler(params)
        if self.sampler_state is not None:
            s.set_state(self.sampler_state.clone())
        return s


def snapshot(
    cache: KVCache,
    tokens: list[int],
    last_logits: torch.Tensor,
    fingerprint: str,
    sampler: Sampler | None = None,
    uri: str = "",
    doc_version: int | None = None,
    text_hash: str = "",
    parent: str | None = None,
    spare_tokens: int = SPARE_TOKENS,
    recipe: str = "",
) -> Capsule:
    """Capture `cache` (exactly `tokens`, in slot order) as a new capsule; the live session stays untouched.

    The KV is copied once into a buffer with `spare_tokens` free slots behind it (a clone: ~4 ms at 2k tokens,
    ~70 ms at 16k on this CPU, done after the completion is sent). `last_logits: [vocab]` are the logits the
    model gave after `tokens[-1]`. `recipe` names how the KV was computed (see `Capsule.recipe`).
    """
    n = cache.n
    if len(tokens) != n:
        raise CapsuleError(f"snapshot of a cache holding {n} tokens given {len(tokens)} token ids")
    if last_logits.dim() != 1:
        raise CapsuleError(f"last_logits must be [vocab], got shape {tuple(last_logits.shape)}")
    L, H, _, D = cache.k.shape  # [n_layers, n_kv_heads, n, head_dim]
    buf = SharedBuffer.empty(L, H, D, n, spare_tokens, cache.k.dtype, cache.k.device)
    buf.k_all[:, :, :n] = cache.k
    buf.v_all[:, :, :n] = cache.v
    buf.pos_all[:n] = cache.positions
    state = sampler.get_state().clone() if sampler is not None else None
    sampling = dataclasses.asdict(sampler.params) if sampler is not None else None
    return Capsule(
        [int(t) for t in tokens], buf, last_logits.detach().float().clone(), fingerprint, state, sampling,
        uri, doc_version, text_hash, parent, recipe=recipe,
    )  # fmt: skip


def check_fingerprint(capsule: Capsule, fingerprint: str) -> None:
    if capsule.fingerprint != fingerprint:
        raise CapsuleError(
            f"capsule {capsule.id} was made by model {capsule.fingerprint}, the loaded model is {fingerprint}: "
            "refused (its KV is meaningless to another model)"
        )


def restore(capsule: Capsule, fingerprint: str, capacity_extra: int = 0, n_tokens: int | None = None) -> RestoredState:
    """A writable session at the capsule's boundary (or at its first `n_tokens` tokens).

    O(1) when the whole capsule is restored and `capacity_extra` fits its spare tail: the cache shares the
    capsule's storage and appends into the tail; a second live session from the same capsule copies before
    its first append. A shorter `n_tokens` or a larger `capacity_extra` copies the kept prefix now.
    Raises CapsuleError on a fingerprint mismatch (both fingerprints in the message).
    """
    check_fingerprint(capsule, fingerprint)
    n = capsule.n if n_tokens is None else n_tokens
    if not 0 <= n <= capsule.n:
        raise CapsuleError(f"cannot restore {n} tokens from capsule {capsule.id} of {capsule.n}")
    cache = SharedPrefixCache(capsule.kv, n, capacity=n + capacity_extra)
    logits = capsule.last_logits.clone() if n == capsule.n else None
    state = capsule.sampler_state.clone() if capsule.sampler_state is not None else None
    return RestoredState(cache, capsule.tokens[:n], logits, state, capsule.id, capsule.sampling)


def fork(capsule: Capsule, fingerprint: str, n: int, capacity_extra: int = 0) -> list[RestoredState]:
    """`n` independent sessions from one capsule (each copies the prefix only when it first appends)."""
    if n < 1:
        raise CapsuleError(f"fork needs n >= 1, got {n}")
    return [restore(capsule, fingerprint, capacity_extra) for _ in range(n)]


def resume_logits(model: Transformer, state: RestoredState, delta: list[int]) -> torch.Tensor:
    """Append `delta` token ids to a restored session; the logits [vocab] for the next token.

    With no delta the capsule's last logits are used as they are: no forward pass at all.
    """
    if not delta:
        if state.last_logits is None:
            raise CapsuleError("a session restored to a shorter prefix needs at least one token to append")
        return state.last_logits
    logits = model.prefill(torch.tensor(delta, device=model.device), state.cache)
    state.tokens.extend(int(t) for t in delta)
    state.last_logits = logits
    return logits
