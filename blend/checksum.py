"""The integrity check of stored KV (chunk entries and capsule files): a wrapping 64-bit word sum."""

from __future__ import annotations

import numpy as np
import torch

U64 = (1 << 64) - 1


def word_sum(buf) -> int:
    """The wrapping sum (mod 2**64) of `buf` read as little-endian u64 words (its length a multiple of 8).

    Summed as int64 by torch, whose reduction runs on all its threads: on a freshly mapped file the pass is
    bound by faulting pages in, and two threads fault twice as fast. Two's-complement wrapping makes the
    result the unsigned sum (tests compare it with numpy's uint64 sum on overflowing data)."""
    words = np.frombuffer(buf, dtype="<i8")
    return int(torch.from_numpy(words).sum()) & U64 if words.size else 0


def pad(n: int, align: int) -> int:
    """Bytes to add after `n` to reach a multiple of `align` (entries keep every piece 8-byte aligned)."""
    return -n % align
