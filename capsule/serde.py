"""The on-disk format of one capsule (same approach as `indexer.serde`, own magic and fields).

    b"KVC1" | u32 header_len | u64 sum | u64 reserved | msgpack header | zero pad to 16 | sections

Sections, each zero-padded to 8 bytes, in this order: tokens (int32 [n]), last logits (fp32 [vocab]),
sampler state (uint8, optional), positions (int64 [n], only when not 0..n-1 shifted by `pos0`),
k, v (the cache's own dtype, [n_layers, n_kv_heads, n, head_dim]). KV is stored exactly as the cache holds
it (fp32 on CPU), never rounded to fp16: a restored capsule must decode token-for-token like the session
it came from, and rounding the KV would change logits.

header: {"format": 1, "id", "n", "shape": [n_layers, n_kv_heads, head_dim], "dtype", "vocab", "fingerprint",
"uri", "doc_version", "text_hash", "parent", "created", "sampling", "sampler_bytes", "pos0" (or absent when a
positions section follows), "recipe" (absent in older files: ""), "len": payload bytes}.

Check: every byte after the fixed 24, read as little-endian u64 words, by their wrapping sum (as in
`indexer.serde`: a flipped bit changes it, truncation changes the length; one pass on torch's threads). The
sum is taken piece by piece as the file streams; every piece starts on an 8-byte boundary so the pieces
combine exactly. The reserved word is written 0 and not read: files written before held an xor of the words
there, a second pass that caught nothing more (their sum is the same and still verified).
A write goes to `<name>.tmp` beside the target and is renamed over it. Any failure raises CapsuleFormatError:
every header field is checked (type, sign) and the sizes it implies must add up to the file's own length
before anything is allocated, so a damaged header can neither crash a reader nor make it allocate more
than the file holds.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from pathlib import Path

import msgpack
import numpy as np
import torch

from blend.checksum import U64, pad, word_sum
from blend.sampling import SamplingParams
from capsule.capsule import FORMAT_VERSION, Capsule, CapsuleError
from capsule.config import SPARE_TOKENS
from capsule.cow import SharedBuffer

log = logging.getLogger(__name__)

MAGIC = b"KVC1"
SUFFIX = ".capsule"
_FIXED = struct.Struct("<4sIQQ")  # magic, header_len, sum64, reserved (0)
_ALIGN = 16
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CapsuleFormatError(CapsuleError):
    """A capsule file failed verification (truncated, bit-flipped, unknown version or dtype)."""


class _Check:
    """Running wrapping sum of little-endian u64 words over pieces that each start 8-aligned."""

    def __init__(self) -> None:
        self.sum = 0

    def add(self, piece: np.ndarray) -> None:
        self.sum = (self.sum + word_sum(piece)) & U64  # piece: uint8 [8 k]


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's bytes as uint8 numpy (zero copy on CPU)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def _kv_pieces(kv_all: torch.Tensor, n: int) -> list[np.ndarray]:
    """The bytes of kv_all[:, :, :n] ([n_layers, n_kv_heads, n, head_dim]) as 8-aligned pieces, no copy on CPU."""
    L, H, _, D = kv_all.shape
    row_bytes = n * D * kv_all.element_size()
    if kv_all.device.type != "cpu" or row_bytes % 8:
        return [_bytes_of(kv_all[:, :, :n])]  # one contiguous copy
    return [_bytes_of(kv_all[layer, head, :n]) for layer in range(L) for head in range(H)]


def _header(c: Capsule) -> dict:
    L, H, _, D = c.kv.k_all.shape
    pos = c.kv.positions.cpu()
    p0 = int(pos[0]) if c.n else 0
    head = {
        "format": c.version, "id": c.id, "n": c.n, "shape": [L, H, D],
        "dtype": str(c.kv.k_all.dtype).removeprefix("torch."), "vocab": int(c.last_logits.shape[0]),
        "fingerprint": c.fingerprint, "uri": c.uri,
        "doc_version": c.doc_version, "text_hash": c.text_hash, "parent": c.parent, "created": c.created,
        "sampling": c.sampling, "sampler_bytes": None if c.sampler_state is None else int(c.sampler_state.numel()),
        "recipe": c.recipe,
    }  # fmt: skip
    if torch.equal(pos, torch.arange(p0, p0 + c.n)):
        head["pos0"] = p0
    return head


def write(capsule: Capsule, path: Path, fsync: bool = False) -> int:
    """Write `capsule` to `path` atomically (temp file + rename); returns the file size in bytes."""
    head = _header(capsule)
    if head["dtype"] not in _DTYPES:
        raise CapsuleError(f"capsule {capsule.id}: KV dtype {head['dtype']} cannot be stored")
    n = capsule.n
    ids = np.array(capsule.tokens, dtype="<i4").view(np.uint8)
    sections: list[list[np.ndarray]] = [[ids], [_bytes_of(capsule.last_logits.float())]]
    if capsule.sampler_state is not None:
        sections.append([_bytes_of(capsule.sampler_state.to(torch.uint8))])
    if "pos0" not in head:
        sections.append([_bytes_of(capsule.kv.positions.to(torch.int64))])
    sections.append(_kv_pieces(capsule.kv.k_all, n))
    sections.append(_kv_pieces(capsule.kv.v_all, n))
    zeros = np.zeros(8, dtype=np.uint8)
    body: list[np.ndarray] = []
    for sec in sections:
        size = sum(p.nbytes for p in sec)
        # Every piece but a section's last is 8-aligned in length (_kv_pieces guarantees it for KV rows).
        body.extend(sec)
        if pad(size, 8):
            body.append(zeros[: pad(size, 8)])
    head["len"] = sum(p.nbytes for p in body)
    hb = msgpack.packb(head)
    head_block = np.zeros(len(hb) + pad(_FIXED.size + len(hb), _ALIGN), dtype=np.uint8)
    head_block[: len(hb)] = np.frombuffer(hb, dtype=np.uint8)
    check = _Check()
    pending = b""
    for piece in [head_block, *body]:  # pieces of odd length (a tokens or logits tail) join the next one
        if pending:
            piece = np.concatenate([np.frombuffer(pending, dtype=np.uint8), piece])
        cut = piece.nbytes - piece.nbytes % 8
        check.add(piece[:cut])
        pending = piece[cut:].tobytes()
    assert not pending, len(pending)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_FIXED.pack(MAGIC, len(hb), check.sum, 0))
            f.write(head_block)
            for piece in body:
                f.write(memoryview(piece))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _FIXED.size + head_block.nbytes + head["len"]


_REQUIRED = object()  # `_field` default: the header must hold the key
_NONE = type(None)
_MAX_POSITION = 1 << 62  # positions are int64: pos0 + n must stay far from overflow


def _field(head: dict, key: str, kinds: tuple[type, ...], default=_REQUIRED):
    """head[key] if it is one of `kinds` (a bool never counts as an int), `default` when absent."""
    if key not in head:
        if default is _REQUIRED:
            raise CapsuleFormatError(f"header has no {key!r} field")
        return default
    value = head[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = " or ".join("None" if k is _NONE else k.__name__ for k in kinds)
        raise CapsuleFormatError(f"header field {key!r} is {value!r:.80}, expected {want}")
    return value


def _count(head: dict, key: str, low: int = 0, optional: bool = False) -> int | None:
    """An integer field >= `low`; None when `optional` and absent or null."""
    value = _field(head, key, (int, _NONE) if optional else (int,), None if optional else _REQUIRED)
    if value is not None and value < low:
        raise CapsuleFormatError(f"header field {key!r} is {value}, expected >= {low}")
    return value


def _checked(head) -> dict:
    """Every field of an unpacked header checked (types, signs, version, dtype); absent optional ones filled in.

    Raises CapsuleFormatError naming the first bad field. Sizes are checked against the file by `_read_head`."""
    if not isinstance(head, dict):
        raise CapsuleFormatError(f"header is a {type(head).__name__}, not a map")
    fmt = _field(head, "format", (int,))
    if fmt != FORMAT_VERSION:
        raise CapsuleFormatError(f"capsule format {fmt}, this build reads {FORMAT_VERSION}")
    out = {"format": fmt, "id": _field(head, "id", (str,)), "n": _count(head, "n")}
    if not out["id"]:
        raise CapsuleFormatError("header field 'id' is empty")
    shape = _field(head, "shape", (list,))
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise CapsuleFormatError(f"header field 'shape' is {shape!r:.80}, expected 3 integers >= 1")
    out["shape"] = shape
    out["dtype"] = _field(head, "dtype", (str,))
    if out["dtype"] not in _DTYPES:
        raise CapsuleFormatError(f"unknown KV dtype {out['dtype']!r:.80}")
    out["vocab"] = _count(head, "vocab")
    out["fingerprint"] = _field(head, "fingerprint", (str,))
    out["uri"] = _field(head, "uri", (str,), "")
    out["doc_version"] = _field(head, "doc_version", (int, _NONE), None)
    out["text_hash"] = _field(head, "text_hash", (str,), "")
    out["parent"] = _field(head, "parent", (str, _NONE), None)
    out["created"] = _field(head, "created", (int, float), 0.0)
    if not math.isfinite(out["created"]):
        raise CapsuleFormatError(f"header field 'created' is {out['created']}, expected a finite time")
    out["sampling"] = _field(head, "sampling", (dict, _NONE), None)
    if out["sampling"] is not None:
        try:
            SamplingParams(**out["sampling"])
        except (TypeError, ValueError) as e:
            raise CapsuleFormatError(f"header field 'sampling' is {out['sampling']!r:.80}: {e}") from None
    out["sampler_bytes"] = _count(head, "sampler_bytes", optional=True)
    out["pos0"] = _count(head, "pos0", low=-_MAX_POSITION, optional=True)
    if out["pos0"] is not None and out["pos0"] + out["n"] > _MAX_POSITION:
        raise CapsuleFormatError(f"header field 'pos0' is {out['pos0']}: positions would overflow int64")
    out["recipe"] = _field(head, "recipe", (str,), "")
    out["len"] = _count(head, "len")
    return out


def _payload_bytes(head: dict) -> int:
    """The payload length a checked header's fields call for (each section padded to 8, as `write` lays it out)."""
    n, (L, H, D), vocab = head["n"], head["shape"], head["vocab"]
    kv = L * H * n * D * _DTYPES[head["dtype"]].itemsize  # k or v: [n_layers, n_kv_heads, n, head_dim]
    sections = [4 * n, 4 * vocab, head["sampler_bytes"] or 0, 0 if head["pos0"] is not None else 8 * n, kv, kv]
    return sum(s + pad(s, 8) for s in sections)


def _read_head(f, size: int) -> tuple[dict, bytes, int, int]:
    """(checked header, header block bytes, sum, payload start) from an open file of `size` bytes.

    Everything the header says is checked against the file's size here, so a reader allocates nothing
    larger than the file however the header was damaged."""
    fixed = f.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        raise CapsuleFormatError(f"file of {size} bytes is truncated")
    magic, hlen, s, _reserved = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise CapsuleFormatError(f"not a capsule file (magic {magic!r})")
    start = _FIXED.size + hlen + pad(_FIXED.size + hlen, _ALIGN)
    if start > size:
        raise CapsuleFormatError(f"header of {hlen} bytes in a file of {size}")
    block = f.read(start - _FIXED.size)
    if len(block) != start - _FIXED.size:
        raise CapsuleFormatError("file truncated inside the header")
    try:
        head = msgpack.unpackb(block[:hlen])
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CapsuleFormatError(f"unreadable header: {e}") from None
    head = _checked(head)
    length = head["len"]
    if size != start + length:
        raise CapsuleFormatError(f"file holds {size - start} payload bytes, its header says {length} (truncated?)")
    need = _payload_bytes(head)
    if length != need:
        raise CapsuleFormatError(f"header says {length} payload bytes, its n, shape, vocab and sections need {need}")
    return head, block, s, start


def read_info(path: Path) -> tuple[dict, list[int]]:
    """Checked header and token ids of a capsule file, without reading (or verifying the sum of) its KV."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head, _, _, _ = _read_head(f, os.fstat(f.fileno()).st_size)
            ids = np.frombuffer(f.read(4 * head["n"]), dtype="<i4")
    except OSError as e:
        raise CapsuleFormatError(f"cannot read {path}: {e.strerror}") from None
    if ids.size != head["n"]:
        raise CapsuleFormatError(f"{path}: token section truncated")
    return head, ids.tolist()


def read(path: Path, spare_tokens: int = SPARE_TOKENS, device: torch.device | str | None = None) -> Capsule:
    """Load and verify a capsule file; the KV lands in a fresh buffer with `spare_tokens` free slots."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, os.fstat(f.fileno()).st_size, spare_tokens, device)
    except OSError as e:
        raise CapsuleFormatError(f"cannot read {path}: {e.strerror}") from None


def _read(f, size: int, spare: int, device) -> Capsule:
    head, block, s, _ = _read_head(f, size)
    check = _Check()
    check.add(np.frombuffer(bytearray(block), dtype=np.uint8))  # writable: torch warns on read-only arrays
    n, (L, H, D), vocab = head["n"], head["shape"], head["vocab"]
    dtype = _DTYPES[head["dtype"]]

    def into(t: torch.Tensor) -> None:  # fill a contiguous tensor from the file, then its section padding
        mv = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        if f.readinto(mv) != mv.nbytes:
            raise CapsuleFormatError("file truncated inside a section")
        check.add(np.frombuffer(mv, dtype=np.uint8)[: mv.nbytes - mv.nbytes % 8])
        tail = mv.nbytes % 8
        if tail:
            rest = bytes(mv[mv.nbytes - tail :]) + f.read(8 - tail)
            check.add(np.frombuffer(bytearray(rest), dtype=np.uint8))

    ids = torch.empty(n, dtype=torch.int32)
    into(ids)
    logits = torch.empty(vocab, dtype=torch.float32)
    into(logits)
    state = None
    if head["sampler_bytes"] is not None:
        state = torch.empty(head["sampler_bytes"], dtype=torch.uint8)
        into(state)
    buf = SharedBuffer.empty(L, H, D, n, spare, dtype, "cpu")
    if head["pos0"] is not None:
        buf.pos_all[:n] = torch.arange(head["pos0"], head["pos0"] + n)
    else:
        into(buf.pos_all[:n])
    row_bytes = n * D * buf.k_all.element_size()
    for kv_all in (buf.k_all, buf.v_all):  # straight into the buffer, one row per (layer, head)
        if row_bytes % 8 == 0:
            for layer in range(L):
                for h in range(H):
                    into(kv_all[layer, h, :n])
        else:
            tmp = torch.empty(L, H, n, D, dtype=dtype)
            into(tmp)
            kv_all[:, :, :n] = tmp
    if check.sum != s:
        raise CapsuleFormatError("checksum mismatch (the file is damaged)")
    if device is not None and torch.device(device).type != "cpu":
        buf = SharedBuffer(buf.k_all.to(device), buf.v_all.to(device), buf.pos_all.to(device), n)
    try:
        return Capsule(
            ids.long().tolist(), buf, logits, head["fingerprint"], state, head["sampling"], head["uri"],
            head["doc_version"], head["text_hash"], head["parent"], head["created"], head["id"], head["format"],
            head["recipe"],
        )  # fmt: skip
    except (TypeError, AssertionError) as e:
        raise CapsuleFormatError(f"inconsistent header: {e}") from None
