"""The byte format of one stored chunk (disk files and Redis values).

    b"KVB3" | u32 header_len | u64 sum | msgpack header | zero pad to 16 |
    tokens (uint16, or int32 when the vocabulary needs it) | pad to 8 | k fp16 | v fp16 | zero pad to 8

header: {"key": "<fingerprint>@<token hash>", "n": n_tokens, "shape": [n_layers, n_kv_heads, head_dim],
"tok": "u2" | "i4", "pos0": first position (positions contiguous) or "pos": [positions], "len": payload bytes}.
k, v: [n_layers, n_kv_heads, n_tokens, head_dim], so the payload is 2 x layers x kv_heads x n x head_dim x 2
bytes plus 2 (or 4) bytes per token for the ids.

Check: everything after the fixed 16 bytes, read as little-endian u64 words, by their wrapping sum (mod 2**64).
Any flipped bit (or several within one word) changes it, truncation changes the length, a torn write that left
zeros passes only if the lost words summed to 0 mod 2**64. It is one pass at memory speed: loading verifies
every byte at about the speed of a plain read (crc32 runs at ~2 GB/s here; KVB2's second pass, an xor, halved
the load rate and caught nothing more of these). It guards against torn writes and bit rot, not forgery.
Any failure raises CorruptEntry.
"""

from __future__ import annotations

import struct
import warnings

import msgpack
import numpy as np
import torch

from blend.cacheblend import ChunkKV
from blend.checksum import U64, pad, word_sum
from indexer.keys import ChunkKey

# Entries decoded from `bytes` are read-only buffers; nothing writes into stored KV (consumers copy it into
# their caches), and the check only reads its words, so torch's warnings about it are noise.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

MAGIC = b"KVB3"
_FIXED = struct.Struct("<4sIQ")  # magic, header_len, sum64
_ALIGN = 16


class CorruptEntry(ValueError):
    """A stored entry failed verification (truncated, bit-flipped, another key or another shape)."""


def encode(key: ChunkKey, kv: ChunkKV) -> bytearray:
    """The entry's bytes. Raises ValueError when k or v overflow fp16 (such KV is never stored rounded)."""
    return bytearray(b"".join(encode_parts(key, kv)))


def encode_parts(key: ChunkKey, kv: ChunkKV) -> list:
    """The entry as buffers to write one after another (the fixed and msgpack header, the token ids, k, v),
    each a multiple of 8 bytes, so the check is summed piece by piece and the KV is never copied into one
    big buffer. Raises ValueError when k or v overflow fp16 (such KV is never stored rounded)."""
    n = len(kv)
    L, H, n_k, D = kv.k.shape  # k: [n_layers, n_kv_heads, n_tokens, head_dim]
    assert n_k == n and kv.v.shape == kv.k.shape and kv.positions.shape == (n,), (kv.k.shape, kv.v.shape, n)
    k16, v16 = kv.k.detach().to("cpu", torch.float16), kv.v.detach().to("cpu", torch.float16)
    cast = kv.k.dtype != torch.float16 or kv.v.dtype != torch.float16  # fp16 in: nothing can overflow
    if cast and not (bool(torch.isfinite(k16).all()) and bool(torch.isfinite(v16).all())):
        raise ValueError(f"KV of {key.to_str()} is not finite in fp16 (overflow): not stored")
    ids = kv.tokens.detach().cpu().numpy()
    tok = "u2" if n == 0 or (ids.min() >= 0 and ids.max() < 1 << 16) else "i4"
    ids = np.ascontiguousarray(ids, dtype="<u2" if tok == "u2" else "<i4")
    pos = kv.positions.detach().cpu()
    p0 = int(pos[0]) if n else 0
    head: dict = {"key": key.to_str(), "n": n, "shape": [L, H, D], "tok": tok}
    head.update({"pos0": p0} if torch.equal(pos, torch.arange(p0, p0 + n)) else {"pos": pos.tolist()})
    tok_bytes = ids.nbytes + pad(ids.nbytes, 8)
    kv_bytes = k16.numel() * 2
    head["len"] = tok_bytes + 2 * kv_bytes + pad(2 * kv_bytes, 8)
    hb = msgpack.packb(head)
    start = _FIXED.size + len(hb) + pad(_FIXED.size + len(hb), _ALIGN)
    first = bytearray(start + tok_bytes)  # fixed header (packed last), msgpack header, pad, ids, pad
    first[_FIXED.size : _FIXED.size + len(hb)] = hb
    first[start : start + ids.nbytes] = ids.tobytes()
    k_bytes, v_bytes = (t.contiguous().view(torch.uint8).reshape(-1).numpy() for t in (k16, v16))
    if kv_bytes % 8 == 0:
        parts = [first, k_bytes, v_bytes]
    else:  # k and v rows of an odd size: one joined, padded piece keeps every piece 8-aligned
        parts = [first, np.concatenate([k_bytes, v_bytes, np.zeros(pad(2 * kv_bytes, 8), np.uint8)])]
    check = sum(word_sum(part) for part in [memoryview(first)[_FIXED.size :], *parts[1:]])
    _FIXED.pack_into(first, 0, MAGIC, len(hb), check & U64)
    return parts


def decode(buf, key: ChunkKey | None = None, shape: tuple[int, int, int] | None = None) -> ChunkKV:
    """Parse and verify an entry. k, v are fp16 views of `buf` (zero copy: bytes, bytearray or an mmap);
    tokens and positions are new long tensors. `shape`: the (layers, kv heads, head_dim) the model has."""
    mv = memoryview(buf)
    if len(mv) < _FIXED.size or (len(mv) - _FIXED.size) % 8:
        raise CorruptEntry(f"entry of {len(mv)} bytes is truncated")
    magic, hlen, s = _FIXED.unpack_from(mv)
    if magic != MAGIC:
        raise CorruptEntry(f"bad magic {magic!r}")
    start = _FIXED.size + hlen + pad(_FIXED.size + hlen, _ALIGN)
    if start > len(mv):
        raise CorruptEntry(f"header of {hlen} bytes in an entry of {len(mv)}")
    if word_sum(mv[_FIXED.size :]) != s:
        raise CorruptEntry("checksum mismatch")
    try:
        head = msgpack.unpackb(mv[_FIXED.size : _FIXED.size + hlen])
        n, (L, H, D), tok, length = head["n"], head["shape"], head["tok"], head["len"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise CorruptEntry(f"unreadable header: {e}") from None
    if tok not in ("u2", "i4"):
        raise CorruptEntry(f"unknown token id type {tok!r}")
    if len(mv) != start + length:
        raise CorruptEntry(f"entry holds {len(mv) - start} payload bytes, its header says {length}")
    if key is not None and head["key"] != key.to_str():
        raise CorruptEntry(f"entry is for {head['key']}, not {key.to_str()}")
    if shape is not None and (L, H, D) != tuple(shape):
        raise CorruptEntry(f"entry has shape {(L, H, D)}, the model {tuple(shape)}")
    itemsize = 2 if tok == "u2" else 4
    tok_bytes = n * itemsize + pad(n * itemsize, 8)
    kv_elems = L * H * n * D
    if length != tok_bytes + 4 * kv_elems + pad(4 * kv_elems, 8):
        raise CorruptEntry(f"payload of {length} bytes does not fit shape {(L, H, n, D)}")
    # numpy views, each wrapped once: torch.frombuffer + view per tensor and torch.arange took ~12 us more per
    # entry right after the checksum pass (caches cold), ~10% of loading an 850 KB entry (disk load 0.89 -> 0.96x
    # a plain read, in one process)
    ids = np.frombuffer(mv, dtype="<u2" if tok == "u2" else "<i4", count=n, offset=start)
    kv = np.frombuffer(mv, dtype="<f2", count=2 * kv_elems, offset=start + tok_bytes).reshape(2, L, H, n, D)
    if "pos" in head:
        positions = torch.tensor(head["pos"], dtype=torch.long)
    else:
        positions = torch.from_numpy(np.arange(head["pos0"], head["pos0"] + n, dtype=np.int64))
    return ChunkKV(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(kv[0]), torch.from_numpy(kv[1]), positions)


def declared_size(prefix) -> int:
    """The total entry size its header declares, from the entry's first bytes (4 KiB hold any header)."""
    mv = memoryview(prefix)
    if len(mv) < _FIXED.size:
        raise CorruptEntry("entry shorter than its fixed header")
    magic, hlen, _ = _FIXED.unpack_from(mv)
    if magic != MAGIC or _FIXED.size + hlen > len(mv):
        raise CorruptEntry("bad magic or header length")
    try:
        length = int(msgpack.unpackb(mv[_FIXED.size : _FIXED.size + hlen])["len"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise CorruptEntry(f"unreadable header: {e}") from None
    return _FIXED.size + hlen + pad(_FIXED.size + hlen, _ALIGN) + length


def entry_nbytes(n_tokens: int, n_layers: int, n_kv_heads: int, head_dim: int) -> int:
    """The k + v payload alone: 2 x layers x kv_heads x n x head_dim x 2 bytes (the bytes-per-token target)."""
    return 4 * n_layers * n_kv_heads * n_tokens * head_dim
