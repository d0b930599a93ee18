"""A KV cache that shares a capsule's storage for its prefix and writes new tokens into the spare tail.

A capsule's KV lives in one preallocated buffer `k, v: [n_layers, n_kv_heads, n + spare, head_dim]` (and
`positions: [n + spare]`) of which the first `n` slots are the capsule. Restoring it wraps that buffer in a
`SharedPrefixCache` with fill `n`: no byte is copied, so a restore is O(1) (~10 us) whatever the context
length, where a clone costs ~4 ms at 2k tokens and ~70 ms at 16k on this CPU (README, "Capsules").

The capsule must never change, so the shared buffer is guarded (copy-on-write):
- The model writes only into slots handed out by `reserve` (>= n). The spare tail is leased to one live
  cache at a time: the first restored cache that appends claims it; another one (a fork still alive) gets a
  private copy before its first append. A lease ends when its cache is garbage-collected or grows past
  the buffer (the doubling in `KVCache.reserve` moves it to fresh storage).
- `truncate` below the capsule's boundary would let later appends overwrite capsule slots: it first moves
  the kept prefix to private storage.
Callers that write into `layer(i)` storage at slots they did not reserve (CacheBlend's scatter on its own
fused cache) must not do so on a restored cache; `detach()` makes one private first.
"""

from __future__ import annotations

import threading
import weakref

import torch

from blend.kv_cache import KVCache


class SharedBuffer:
    """The immutable prefix `[:n]` of a KV buffer plus a lease on its spare tail `[n:]`.

    Storage: k_all, v_all: [n_layers, n_kv_heads, capacity, head_dim], pos_all: [capacity]; only `[:n]` is
    capsule data (`k`, `v`, `positions` are views of it).
    """

    def __init__(self, k_all: torch.Tensor, v_all: torch.Tensor, pos_all: torch.Tensor, n: int) -> None:
        assert k_all.shape == v_all.shape and k_all.dim() == 4, (k_all.shape, v_all.shape)
        assert pos_all.shape == (k_all.shape[2],), (pos_all.shape, k_all.shape)
        assert 0 <= n <= k_all.shape[2], (n, k_all.shape)
        self.k_all, self.v_all, self.pos_all, self.n = k_all, v_all, pos_all, n
        self._tenant: weakref.ref | None = None  # the cache that may write into [n:]
        self._lock = threading.Lock()

    @classmethod
    def empty(
        cls, n_layers: int, n_kv_heads: int, head_dim: int, n: int, spare: int, dtype: torch.dtype, device
    ) -> SharedBuffer:
        """Uninitialised storage for `n` tokens plus `spare` free slots (the caller fills `[:n]`)."""
        k = torch.empty(n_layers, n_kv_heads, n + spare, head_dim, dtype=dtype, device=device)
        return cls(k, torch.empty_like(k), torch.zeros(n + spare, dtype=torch.long, device=device), n)

    @property
    def k(self) -> torch.Tensor:  # [n_layers, n_kv_heads, n, head_dim]
        return self.k_all[:, :, : self.n]

    @property
    def v(self) -> torch.Tensor:  # [n_layers, n_kv_heads, n, head_dim]
        return self.v_all[:, :, : self.n]

    @property
    def positions(self) -> torch.Tensor:  # [n]
        return self.pos_all[: self.n]

    @property
    def capacity(self) -> int:
        return self.k_all.shape[2]

    @property
    def spare(self) -> int:
        return self.capacity - self.n

    @property
    def nbytes(self) -> int:
        """Bytes held in memory, spare tail included."""
        return self.k_all.nbytes + self.v_all.nbytes + self.pos_all.nbytes

    def claim_tail(self, cache: SharedPrefixCache) -> bool:
        """Lease [n:] to `cache` unless another live cache still writes there."""
        with self._lock:
            tenant = self._tenant() if self._tenant is not None else None
            if tenant is None or tenant is cache or not tenant.shares(self):
                self._tenant = weakref.ref(cache)
                return True
            return False


class SharedPrefixCache(KVCache):
    """A `KVCache` over a `SharedBuffer`: reads the shared prefix in place, copies only when it must."""

    def __init__(self, buf: SharedBuffer, n: int | None = None, capacity: int = 0) -> None:
        """Share `buf`'s first `n` tokens (default all). Copies at once only when `n` is short of the boundary
        (appends would land on capsule slots) or `capacity` exceeds the buffer."""
        self._buf: SharedBuffer | None = buf
        self._k, self._v, self._pos = buf.k_all, buf.v_all, buf.pos_all  # no KVCache.__init__: nothing allocated
        self.n = buf.n if n is None else n
        assert 0 <= self.n <= buf.n, (self.n, buf.n)
        self._tail_ok = False  # set once the tail lease is ours
        if self.n < buf.n or capacity > buf.capacity:
            self._privatize(max(capacity, self.n + buf.spare))

    def shares(self, buf: SharedBuffer) -> bool:
        """True while this cache still points at `buf`'s storage."""
        return self._k is buf.k_all

    @property
    def is_shared(self) -> bool:
        return self._buf is not None and self.shares(self._buf)

    def _privatize(self, capacity: int) -> None:
        """Move the first `n` tokens into private storage of at least `capacity` slots."""
        L, H, _, D = self._k.shape
        cap = max(capacity, self.n, 1)
        k = torch.empty(L, H, cap, D, dtype=self._k.dtype, device=self._k.device)
        v = torch.empty_like(k)
        pos = torch.zeros(cap, dtype=torch.long, device=self._pos.device)
        k[:, :, : self.n] = self._k[:, :, : self.n]
        v[:, :, : self.n] = self._v[:, :, : self.n]
        pos[: self.n] = self._pos[: self.n]
        self._k, self._v, self._pos, self._buf = k, v, pos, None

    def detach(self, capacity: int | None = None) -> SharedPrefixCache:
        """Stop sharing: copy the cached tokens into private storage (a no-op when already private)."""
        if self.is_shared:
            self._privatize(capacity or self.capacity)
        return self

    def reserve(self, n_new: int) -> slice:
        if self.is_shared and not self._tail_ok:
            if self.n + n_new <= self.capacity and self._buf.claim_tail(self):
                self._tail_ok = True
            else:  # a fork still writes the tail, or it is too short: one private copy, with room to grow
                self._privatize(max(self.n + n_new, self.capacity))
        return super().reserve(n_new)

    def truncate(self, n: int) -> None:
        if self.is_shared and n < self._buf.n:
            super().truncate(n)
            self._privatize(self.capacity)
            return
        super().truncate(n)
