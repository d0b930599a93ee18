"""Chunk identity: hash(model fingerprint, token ids), and the string forms the stores use."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

import numpy as np

_HEX = re.compile(r"^[0-9a-f]{8,128}$")


@dataclasses.dataclass(frozen=True)
class ChunkKey:
    """The key of one chunk's KV in every store tier.

    fingerprint: the model fingerprint (KV computed under another one is never served);
    token_hash: blake2b-128 of the chunk's token ids, and of the shared prefix it was computed behind, if any.
    """

    fingerprint: str
    token_hash: str

    def __post_init__(self) -> None:
        for name in ("fingerprint", "token_hash"):
            if not _HEX.match(getattr(self, name)):
                raise ValueError(f"ChunkKey.{name} must be lowercase hex, got {getattr(self, name)!r}")

    def to_str(self) -> str:
        return f"{self.fingerprint}@{self.token_hash}"

    @classmethod
    def from_str(cls, s: str) -> ChunkKey:
        fingerprint, sep, token_hash = s.partition("@")
        if not sep:
            raise ValueError(f"not a chunk key (want <fingerprint>@<token hash>): {s!r}")
        return cls(fingerprint, token_hash)

    def relpath(self) -> str:
        """The entry's file under the disk tier's directory: <fingerprint>/<1 hex>/<token hash>.kv.

        16 fan-out directories: a first index makes at most 16 of them (each mkdir waits on the filesystem
        journal while the index writes: 256 cost ~3% of a small model's index time), and 100k chunks still
        make only ~6k files a directory."""
        return f"{self.fingerprint}/{self.token_hash[:1]}/{self.token_hash}.kv"


def chunk_key(fingerprint: str, tokens: Sequence[int], prefix: Sequence[int] = ()) -> ChunkKey:
    """The key of `tokens` prefilled by the model `fingerprint`, alone or behind `prefix` tokens."""
    h = hashlib.blake2b(digest_size=16)
    h.update(fingerprint.encode())
    h.update(b"\0p%d\0" % len(prefix))
    h.update(np.asarray(prefix, dtype="<u4").tobytes())
    h.update(b"\0t")
    h.update(np.asarray(tokens, dtype="<u4").tobytes())
    return ChunkKey(fingerprint, h.hexdigest())
