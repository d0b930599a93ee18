"""The hand-off of blended KV from our engine to vLLM's KV connector (`kvblend.vllm_connector`).

Our side blends a context on the same weights vLLM serves and `put`s the KV of the prompt's first tokens
under a `HandoffKey` (token count + digest of those token ids). The request names that key in its
kv_transfer_params; vLLM's scheduler-side connector checks that the prompt really begins with those tokens
and reports them as matched, and the worker-side connector `get`s the KV and writes it into vLLM's paged cache.

Two tiers: process memory (vLLM running in this process: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, no copy) and an
optional directory of safetensors files (vLLM's engine core in another process on the same machine).
This module does not import vLLM, so it is tested in the main suite.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HandoffKey:
    """Names the KV of a token prefix: its length, a digest of its token ids, and the tag of the `put` that
    stored it (so two requests for the same prompt, or two engines sharing a directory, never read or drop
    each other's KV)."""

    n_tokens: int
    digest: str  # blake2b-128 hex of the token ids as little-endian int64
    tag: str = ""  # random hex per `put`; "" in keys made by `of`

    @classmethod
    def of(cls, tokens: Sequence[int]) -> HandoffKey:
        return cls(len(tokens), token_digest(tokens))

    def matches(self, tokens: Sequence[int]) -> bool:
        """True when `tokens` begins with the prefix this key names."""
        return len(tokens) >= self.n_tokens and token_digest(tokens[: self.n_tokens]) == self.digest

    def to_str(self) -> str:
        return f"{self.n_tokens}-{self.digest}" + (f"-{self.tag}" if self.tag else "")

    @classmethod
    def from_str(cls, s: str) -> HandoffKey:
        m = _KEY.fullmatch(str(s))
        if m is None:
            raise ValueError(f"not a kvblend hand-off key: {s!r}")
        return cls(int(m.group(1)), m.group(2), m.group(3) or "")


_KEY = re.compile(r"(\d+)-([0-9a-f]{32})(?:-([0-9a-f]{1,32}))?")  # n_tokens-digest[-tag]


def token_digest(tokens: Sequence[int]) -> str:
    data = torch.as_tensor(list(tokens), dtype=torch.int64).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


STALE_S = 600.0  # a hand-off lives for one request; a file this old was left by an engine that died

# Process-wide memory tier: the scheduler and worker connectors of an in-process vLLM see the engine's puts.
_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_LOCK = threading.Lock()
_STATS: collections.Counter = collections.Counter()  # puts, loads (gets that found KV), misses


def handoff_stats() -> dict[str, int]:
    """Counts since the process started: puts, loads (a connector took the KV), misses."""
    with _LOCK:
        return dict(_STATS)


class KVHandoff:
    """Blended KV by key. k, v: [n_layers, n_kv_heads, n_tokens, head_dim], keys post-RoPE at positions 0..n-1."""

    def __init__(self, directory: str | Path | None = None, stale_s: float = STALE_S) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.sweep(stale_s)

    def sweep(self, stale_s: float = STALE_S) -> int:
        """Delete hand-off files (and temporary files) older than `stale_s` seconds: those of an engine that died
        between `put` and `drop`. Other files in the directory are left alone. Returns how many went."""
        if self.directory is None:
            return 0
        removed, cutoff = 0, time.time() - stale_s
        for p in self.directory.iterdir():
            name = p.name
            ours = name.endswith(".safetensors") and _KEY.fullmatch(name.removesuffix(".safetensors"))
            ours = ours or (name.startswith(".") and name.endswith(".tmp") and _KEY.match(name[1:]))
            try:
                if ours and p.is_file() and p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except OSError:  # dropped meanwhile, or not ours to delete
                continue
        if removed:
            log.info("removed %d stale hand-off files from %s", removed, self.directory)
        return removed

    def _path(self, key: HandoffKey) -> Path:
        assert self.directory is not None
        return self.directory / f"{key.to_str()}.safetensors"

    def put(self, tokens: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> HandoffKey:
        """Keep the KV of `tokens` (k, v: [n_layers, n_kv_heads, len(tokens), head_dim]); returns its key."""
        if k.shape != v.shape or k.dim() != 4 or k.shape[2] != len(tokens):
            raise ValueError(f"k, v must be [n_layers, n_kv_heads, {len(tokens)}, head_dim], got {k.shape}, {v.shape}")
        key = dataclasses.replace(HandoffKey.of(tokens), tag=secrets.token_hex(8))
        with _LOCK:
            _STATS["puts"] += 1
        if self.directory is not None:
            self._write(key, k, v)
        else:
            with _LOCK:
                _MEMORY[key.to_str()] = (k, v)
        return key

    def _write(self, key: HandoffKey, k: torch.Tensor, v: torch.Tensor) -> None:
        """Save to a temporary file beside the entry, then rename it over the entry: another process's connector
        (or another engine putting the same prompt) never reads a half-written file."""
        fd, tmp = tempfile.mkstemp(prefix=f".{key.to_str()}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        try:
            save_file({"k": k.contiguous().cpu(), "v": v.contiguous().cpu()}, tmp)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: HandoffKey) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(k, v) of `key`, or None when it is not here (or its file was dropped or is unreadable: vLLM then
        recomputes those tokens rather than failing the request)."""
        with _LOCK:
            kv = _MEMORY.get(key.to_str())
        if kv is None and self.directory is not None:
            kv = self._load(key)
        with _LOCK:
            _STATS["loads" if kv is not None else "misses"] += 1
        return kv

    def _load(self, key: HandoffKey) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            t = load_file(self._path(key))
            k, v = t["k"], t["v"]
        except FileNotFoundError:  # dropped by its engine after `has` said yes
            return None
        except (SafetensorError, KeyError, OSError) as e:  # damaged, not ours, unreadable
            log.warning("cannot load hand-off %s: %s", key.to_str(), e)
            return None
        # k, v: [n_layers, n_kv_heads, key.n_tokens, head_dim]; anything else was not written by `put` for this key
        if k.dim() != 4 or k.shape != v.shape or k.shape[2] != key.n_tokens:
            log.warning("hand-off %s holds k %s, v %s: not the KV of %d tokens, ignored",
                        key.to_str(), tuple(k.shape), tuple(v.shape), key.n_tokens)  # fmt: skip
            return None
        return k, v

    def has(self, key: HandoffKey) -> bool:
        with _LOCK:
            if key.to_str() in _MEMORY:
                return True
        return self.directory is not None and self._path(key).is_file()

    def drop(self, key: HandoffKey) -> None:
        with _LOCK:
            _MEMORY.pop(key.to_str(), None)
        if self.directory is not None:
            self._path(key).unlink(missing_ok=True)
