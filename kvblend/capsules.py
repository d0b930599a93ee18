"""Capsules in the completion service: snapshots at committed boundaries, resume by longest token prefix.

A capsule is taken at the prompt boundary (repository context + local prompt, with the prompt's logits):
- after every request that built a new context (a blend: the expensive step worth keeping),
- when a client asks (`kvblend/capsule.snapshot`) and before an agent edit is applied.
A request whose document session cannot be reused (another context was selected, the session was evicted)
looks for the capsule sharing the longest token prefix with its prompt; when that prefix covers the whole
repository context it restores it (O(1) when the whole capsule matches) and prefills only the rest. An
undo that brings the document and cursor back to a captured state matches a capsule exactly: its logits
are used as they are, with no prefill at all. Each document's capsules form an undo tree (`SessionTree`).
Only capsules of the request's KV recipe (`kv_recipe`: the context mode and blend ratio) are resumed: the
same tokens hold other KV under another mode, and resuming it would answer as the mode the user left.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import torch

from blend.kv_cache import KVCache
from capsule import CapsuleStore, SessionTree, restore, snapshot, text_hash
from capsule.capsule import Capsule, RestoredState
from capsule.store import common_prefix

log = logging.getLogger(__name__)

# Context modes whose KV is that of a plain causal prefill (prefix: the header's exact prefix + a prefill).
_EXACT_MODES = ("full", "prefix", "none")


def kv_recipe(mode: str, recompute_ratio: float) -> str:
    """How a context's KV is computed, as capsules are matched on it (`Capsule.recipe`).

    `mode` is the mode a request's context was built by (blend with no chunks is a full prefill). Exact modes
    share one recipe; naive reuses chunk KV as it is; blend's KV depends on its recompute ratio."""
    if mode in _EXACT_MODES:
        return "exact"
    return f"blend:{float(recompute_ratio)!r}" if mode == "blend" else mode


@dataclasses.dataclass
class Resumed:
    state: RestoredState
    keep: int  # tokens of the prompt taken from the capsule
    capsule_id: str


class CapsuleKeeper:
    def __init__(self, store: CapsuleStore, fingerprint: str) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.trees: dict[str, SessionTree] = {}
        self.pinned: dict[str, str] = {}  # uri -> capsule id a client restored: tried first
        self._lock = threading.Lock()

    def tree(self, uri: str) -> SessionTree:
        with self._lock:
            return self.trees.setdefault(uri, SessionTree(uri))

    def take(
        self,
        uri: str,
        cache: KVCache,
        tokens: list[int],
        logits: torch.Tensor,
        doc_text: str,
        version: int | None,
        recipe: str = "",
    ) -> Capsule:
        """Snapshot `cache` (exactly `tokens`, its KV made by `recipe`) with the logits after its last token;
        committed to the uri's tree."""
        tree = self.tree(uri)
        c = snapshot(cache, tokens, logits, self.fingerprint, uri=uri, doc_version=version,
                     text_hash=text_hash(doc_text), parent=tree.current, recipe=recipe)  # fmt: skip
        self.store.put(c)
        tree.commit(c)
        return c

    def resume(self, uri: str, prompt: list[int], min_common: int, extra: int, recipe: str = "") -> Resumed | None:
        """Restore the capsule of `recipe` sharing the longest prefix (>= `min_common` tokens) with `prompt`.

        Keeps all of a capsule that `prompt` extends or equals (O(1), its logits when equal), else at most
        len(prompt) - 1 tokens so that one token at least runs for fresh logits."""
        found = None
        pin = self.pinned.get(uri)
        if pin is not None:
            c = self.store.get(pin, self.fingerprint)
            if c is not None and c.recipe == recipe:  # another recipe's pin waits for its own mode
                found = (c, common_prefix(c.tokens, prompt))
        if found is None or found[1] < min_common:
            found = self.store.longest_prefix(uri, prompt, self.fingerprint, recipe)
        if found is None or found[1] < min_common:
            return None
        c, n = found
        keep = n if n == c.n and (n < len(prompt) or c.last_logits is not None) else min(n, len(prompt) - 1)
        state = restore(c, self.fingerprint, capacity_extra=len(prompt) - keep + extra, n_tokens=keep)
        if self.pinned.get(uri) == c.id:
            self.pinned.pop(uri)
        tree = self.tree(uri)
        if c.id in tree.nodes:
            tree.cursors[tree.branch] = c.id
        return Resumed(state, keep, c.id)

    # -- the LSP / CLI commands ----------------------------------------------------------------

    def pin(self, cid: str) -> dict:
        c = self.store.get(cid, self.fingerprint)
        if c is None:
            raise ValueError(f"unknown capsule {cid!r}")
        self.pinned[c.uri] = c.id
        tree = self.tree(c.uri)
        if c.id in tree.nodes:
            tree.cursors[tree.branch] = c.id
        return c.info()

    def undo(self, uri: str) -> dict | None:
        """Pin the nearest ancestor whose capsule the store still has; None (and no move) when none has.

        The store's budgets evict capsules the tree still names: pinning such a node failed after the cursor
        had moved, so each retry of an undo walked one step further up."""
        tree = self.tree(uri)
        start = tree.current
        while (cid := tree.undo()) is not None:
            if self.store.get(cid, self.fingerprint) is not None:
                return self.pin(cid)
        tree.cursors[tree.branch] = start
        return None

    def fork(self, cid: str, n: int) -> list[str]:
        c = self.store.get(cid, self.fingerprint)
        if c is None:
            raise ValueError(f"unknown capsule {cid!r}")
        tree = self.tree(c.uri)
        tree.commit(c)  # adds it when new; either way it becomes the node the branches start from
        return tree.fork(n)

    def drop(self, cid: str) -> bool:
        for tree in self.trees.values():
            if cid in tree.nodes:
                tree.remove(cid)
        self.pinned = {u: p for u, p in self.pinned.items() if p != cid}
        return self.store.drop(cid)

    def list(self, uri: str | None = None) -> list[dict]:
        return self.store.list(uri)
