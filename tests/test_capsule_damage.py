"""Damaged capsule files: every header fault is a CapsuleFormatError, a store starting on them skips and deletes
them, the CLI's inspecting commands report them in one line and never delete, and the LSP backend still serves."""

import asyncio
import json
import logging
import os
import types as pytypes
from pathlib import Path

import msgpack
import pytest
import torch
from lsprotocol import types
from pygls.workspace import TextDocument

from blend.checksum import pad, word_sum
from blend.kv_cache import KVCache
from blend.loader import load_model
from capsule import CapsuleConfig, CapsuleStore, serde, snapshot
from capsule.store import list_dir, verify_dir
from kvblend.cli import main
from lsp_server.backend import Backend, ServerOptions

L, H, D, VOCAB = 2, 1, 4, 16
TOKENS = [5, 6, 7, 8]  # n = 4 packs as the msgpack fixint 0x04 (the bit flip below turns it into -28)


def write_capsule(directory: Path, name: str | None = None) -> tuple[Path, str]:
    """A sound capsule file in `directory` (named after its id unless `name` is given); (path, id)."""
    n = len(TOKENS)
    g = torch.Generator().manual_seed(0)
    cache = KVCache.from_tensors(torch.randn(L, H, n, D, generator=g), torch.randn(L, H, n, D, generator=g),
                                 torch.arange(n))  # fmt: skip
    c = snapshot(cache, TOKENS, torch.randn(VOCAB, generator=g), "f" * 32, uri="file:///a.py", spare_tokens=0)
    path = directory / (name or f"{c.id}{serde.SUFFIX}")
    serde.write(c, path)
    return path, c.id


def rewrite_header(path: Path, edit) -> None:
    """Replace the header of the capsule file at `path` by `edit(header)` (a dict, or raw msgpack bytes) and
    recompute the sum: a damaged header that the checksum cannot catch, only the field checks."""
    raw = path.read_bytes()
    fixed = serde._FIXED.size
    _, hlen, _, _ = serde._FIXED.unpack(raw[:fixed])
    start = fixed + hlen + pad(fixed + hlen, 16)
    new = edit(msgpack.unpackb(raw[fixed : fixed + hlen]))
    hb = new if isinstance(new, bytes) else msgpack.packb(new)
    rest = hb + bytes(pad(fixed + len(hb), 16)) + raw[start:]  # 8-aligned: the sections are padded
    path.write_bytes(serde._FIXED.pack(serde.MAGIC, len(hb), word_sum(bytearray(rest)), 0) + rest)


def flip(path: Path, marker: bytes, offset: int, mask: int) -> None:
    """Flip bits in the header of `path` without touching the sum: bit rot."""
    data = bytearray(path.read_bytes())
    i = data.index(marker) + offset
    data[i] ^= mask
    path.write_bytes(bytes(data))


def _without(key):
    return lambda h: {k: v for k, v in h.items() if k != key}


def _with(**fields):
    return lambda h: h | fields


# name -> (header edit, what the error says); every one used to escape as KeyError/TypeError/RuntimeError/...
REWRITES = {
    "no_id": (_without("id"), "no 'id' field"),
    "id_int": (_with(id=12345), "'id' is 12345, expected str"),
    "id_empty": (_with(id=""), "'id' is empty"),
    "n_negative": (_with(n=-1), "'n' is -1, expected >= 0"),
    "n_string": (_with(n="4"), "'n' is '4', expected int"),
    "n_huge": (_with(n=10**13), "payload bytes, its n, shape"),  # was a 40 TB allocation
    "vocab_negative": (_with(vocab=-5), "'vocab' is -5"),
    "vocab_huge": (_with(vocab=1 << 40), "payload bytes"),
    "shape_negative": (_with(shape=[2, -1, 4]), "'shape' is \\[2, -1, 4\\]"),
    "shape_short": (_with(shape=[2, 1]), "'shape'"),
    "shape_not_list": (_with(shape="2x1x4"), "'shape' is '2x1x4'"),
    "sampler_negative": (_with(sampler_bytes=-3), "'sampler_bytes' is -3"),
    "pos0_string": (_with(pos0="0"), "'pos0' is '0'"),
    "created_string": (_with(created="yesterday"), "'created' is 'yesterday'"),
    "created_inf": (_with(created=float("inf")), "finite"),
    "uri_int": (_with(uri=5), "'uri' is 5"),
    "parent_int": (_with(parent=7), "'parent' is 7"),
    "doc_version_string": (_with(doc_version="1"), "'doc_version'"),
    "fingerprint_missing": (_without("fingerprint"), "no 'fingerprint'"),
    "sampling_bogus": (_with(sampling={"temperature": "hot"}), "'sampling'"),
    "dtype_unknown": (_with(dtype="int8"), "unknown KV dtype"),
    "format_bool": (_with(format=True), "'format' is True"),
    "len_string": (_with(len="592"), "'len'"),
    "header_list": (lambda h: msgpack.packb([1, 2, 3]), "not a map"),
}
# name -> (marker, offset, xor mask, what the error says): one header bit flipped, sum left stale.
FLIPS = {
    "flip_n": (b"\xa1n\x04", 2, 0xE0, "'n' is -28"),  # 0x04 -> 0xe4: a negative fixint
    "flip_id_key": (b"\xa2id", 1, 0x01, "no 'id' field"),  # the key "id" -> "hd"
}


def damage(directory: Path, case: str) -> Path:
    """A copy of a sound capsule under `directory/<case>.capsule`, damaged as `case` says."""
    path, _ = write_capsule(directory, f"{case}{serde.SUFFIX}")
    if case in REWRITES:
        rewrite_header(path, REWRITES[case][0])
    else:
        marker, offset, mask, _ = FLIPS[case]
        flip(path, marker, offset, mask)
    return path


def fill_damaged_dir(d: Path) -> tuple[str, list[Path], Path]:
    """One sound capsule, every damaged case, junk, a misnamed copy, a directory and a dangling link.

    Returns (the sound id, the damaged files a store deletes, the directory it cannot)."""
    _, good = write_capsule(d)
    bad = [damage(d, case) for case in [*REWRITES, *FLIPS]]
    bad.append(write_capsule(d, f"misnamed{serde.SUFFIX}")[0])  # sound, but not named after its id
    traversal, _ = write_capsule(d, f"traversal{serde.SUFFIX}")
    rewrite_header(traversal, _with(id="../../victim"))
    bad.append(traversal)
    (d / f"empty{serde.SUFFIX}").write_bytes(b"")
    (d / f"garbage{serde.SUFFIX}").write_bytes(os.urandom(4096))
    (d / f"dangling{serde.SUFFIX}").symlink_to(d / "nowhere")
    bad += [d / f"empty{serde.SUFFIX}", d / f"garbage{serde.SUFFIX}", d / f"dangling{serde.SUFFIX}"]
    adir = d / f"adir{serde.SUFFIX}"
    adir.mkdir()
    return good, bad, adir


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_rewriting_an_intact_header_keeps_the_file_sound(tmp_path):
    path, cid = write_capsule(tmp_path)
    before = serde.read(path)
    rewrite_header(path, lambda h: h)  # the test helper itself produces readable files
    after = serde.read(path)
    assert after.id == cid and after.tokens == TOKENS and torch.equal(after.kv.k, before.kv.k)
    head, tokens = serde.read_info(path)
    assert head["id"] == cid and tokens == TOKENS and head["uri"] == "file:///a.py" and head["pos0"] == 0


@pytest.mark.parametrize("case", [*REWRITES, *FLIPS])
def test_damaged_header_is_a_format_error(tmp_path, case):
    path = damage(tmp_path, case)
    said = REWRITES[case][1] if case in REWRITES else FLIPS[case][3]
    with pytest.raises(serde.CapsuleFormatError, match=said):
        serde.read_info(path)
    with pytest.raises(serde.CapsuleFormatError, match=said):
        serde.read(path)


def test_unreadable_paths_are_format_errors(tmp_path):
    (tmp_path / "adir.capsule").mkdir()
    (tmp_path / "dangling.capsule").symlink_to(tmp_path / "nowhere")
    for p in (tmp_path / "adir.capsule", tmp_path / "dangling.capsule"):
        with pytest.raises(serde.CapsuleFormatError, match="cannot read"):
            serde.read_info(p)
        with pytest.raises(serde.CapsuleFormatError, match="cannot read"):
            serde.read(p)


def test_store_start_skips_and_deletes_damaged_files(tmp_path, caplog):
    d = tmp_path / "a" / "b" / "caps"
    d.mkdir(parents=True)
    good, bad, adir = fill_damaged_dir(d)
    victim = tmp_path / "a" / "victim.capsule"  # where "../../victim" would point from the store's directory
    victim.write_bytes(b"not the store's")
    with caplog.at_level(logging.WARNING, logger="capsule.store"):
        store = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=d))
    assert [i["id"] for i in store.list()] == [good]
    assert store.get(good).tokens == TOKENS
    assert store.longest_prefix(None, TOKENS) is not None
    # The server's store deletes what it cannot use (README); a directory is left alone, with a warning.
    assert names(d) == sorted([f"{good}.capsule", adir.name])
    assert store.stats()["dropped_corrupt"] == len(bad) + 1
    assert "cannot delete" in caplog.text and "no 'id' field" in caplog.text
    assert not store.drop("../../victim") and victim.exists()


def test_scan_and_verify_report_every_damaged_file_and_change_nothing(tmp_path):
    good, bad, adir = fill_damaged_dir(tmp_path)
    before = names(tmp_path)
    infos, damaged = list_dir(tmp_path)
    assert [i["id"] for i in infos] == [good] and infos[0]["n_tokens"] == len(TOKENS)
    assert sorted(p for p, _ in damaged) == sorted([*bad, adir])
    results = dict(verify_dir(tmp_path))
    assert results.pop(tmp_path / f"{good}.capsule") is None
    assert set(results) == {*bad, adir} and all(results.values())
    assert "file name" in results[tmp_path / "misnamed.capsule"]
    assert "file name" in results[tmp_path / "traversal.capsule"]
    assert "'n' is -28" in results[tmp_path / "flip_n.capsule"]  # the header is checked before any allocation
    assert names(tmp_path) == before


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_inspecting_never_deletes_and_prints_one_line_per_damaged_file(tmp_path, capsys):
    good, bad, adir = fill_damaged_dir(tmp_path)
    before = names(tmp_path)
    n_damaged = len(bad) + 1
    for args in (["list"], ["list", "--json"], ["list", "--uri", "file:///a.py"], ["show", good], ["drop", "nope"]):
        rc, out, err = _cli(capsys, "capsule", *args, "--dir", tmp_path)
        lines = err.strip().splitlines()
        assert "Traceback" not in out + err and len(lines) == n_damaged + (args[0] == "drop"), (args, err)
        assert all(line.startswith("kvblend: skipped damaged capsule file ") for line in lines[:n_damaged])
        assert names(tmp_path) == before, args  # inspecting deleted nothing
        assert rc == (1 if args[0] == "drop" else 0) and (args[0] == "drop" or good in out)
    rc, out, err = _cli(capsys, "capsule", "show", "no_id", "--dir", tmp_path)
    assert rc == 1 and "no capsule no_id" in err and names(tmp_path) == before
    # verify: one line per file, exit 1; --delete removes the damaged files it can and says which it cannot.
    rc, out, err = _cli(capsys, "capsule", "verify", "--dir", tmp_path)
    assert rc == 1 and len(out.strip().splitlines()) == len(before) and "Traceback" not in out + err
    assert out.count("DAMAGED") == n_damaged and names(tmp_path) == before
    rc, out, err = _cli(capsys, "capsule", "verify", "--delete", "--json", "--dir", tmp_path)
    assert rc == 1 and "Traceback" not in err
    assert names(tmp_path) == sorted([f"{good}.capsule", adir.name])
    assert list(json.loads(out)["not_deleted"]) == [adir.name]
    rc, out, err = _cli(capsys, "capsule", "drop", good, "--dir", tmp_path)
    assert rc == 0 and names(tmp_path) == [adir.name]


# -- the LSP backend ------------------------------------------------------------------------------


class _Server:
    """What Backend.start and complete touch of the pygls server."""

    def __init__(self) -> None:
        self.messages: list[types.ShowMessageParams] = []
        self.statuses: list = []
        self.protocol = pytypes.SimpleNamespace(notify=lambda method, params: self.statuses.append(params))
        self.client_capabilities = types.ClientCapabilities()
        self.workspace = pytypes.SimpleNamespace(text_documents={})

    def window_show_message(self, params: types.ShowMessageParams) -> None:
        self.messages.append(params)


@pytest.fixture(scope="module")
def lm():
    return load_model(None)


def _backend(tmp_path: Path, lm) -> tuple[Backend, Path]:
    root = tmp_path / "ws"
    root.mkdir()
    backend = Backend(_Server(), ServerOptions(index=False, watch=False))
    backend.root = root
    backend._load = lambda: lm
    caps = root / ".kvblend" / "cache" / "capsules"
    caps.mkdir(parents=True)
    return backend, caps


async def _complete(backend: Backend, root: Path):
    text = "def add(a, b):\n    return a + b\n\n\nx = add(1, 2)\ny = "
    uri = (root / "app.py").as_uri()
    backend.server.workspace.text_documents[uri] = TextDocument(uri, text, 1)
    pos = types.Position(line=5, character=4)
    return await asyncio.wait_for(backend.complete(uri, pos, "invoked"), timeout=60)


async def test_backend_serves_with_a_damaged_capsule_file(tmp_path, lm):
    backend, caps = _backend(tmp_path, lm)
    _, good = write_capsule(caps)
    damage(caps, "flip_id_key")  # bit rot in the header: the probe's KeyError that left `loaded` unset
    try:
        await asyncio.wait_for(backend.start(), timeout=60)
        assert backend.loaded.done() and backend.loaded.exception() is None
        assert backend.status.state == "ready" and backend.completer.capsules is not None
        assert good in backend.completer.capsules.store and names(caps) == [f"{good}.capsule"]
        result = await _complete(backend, backend.root)
        assert result.source == "model" and result.tokens_prefilled > 0  # the model ran and answered
    finally:
        backend.shutdown()


async def test_backend_serves_without_capsules_when_the_store_fails(tmp_path, lm):
    backend, _ = _backend(tmp_path, lm)

    def broken():
        raise RuntimeError("capsule store exploded")

    backend._make_capsules = broken
    try:
        await asyncio.wait_for(backend.start(), timeout=60)
        assert backend.loaded.done() and backend.completer.capsules is None
        assert any("capsules off: capsule store exploded" in m.message for m in backend.server.messages)
        result = await _complete(backend, backend.root)
        assert result.source == "model" and result.tokens_prefilled > 0  # the model ran and answered
    finally:
        backend.shutdown()


def test_start_up_keys_of_the_wrong_type_are_ignored_with_a_warning(tmp_path):
    backend = Backend(_Server(), ServerOptions(index=False, watch=False))
    params = types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        root_uri=tmp_path.as_uri(),
        initialization_options={"model": {"x": 1}, "redisUrl": 6379},
    )
    warnings = backend.initialize(params)
    assert backend.options.model is None and backend.options.redis_url is None
    assert any("model must be a string" in w for w in warnings), warnings
    assert any("redisUrl must be a string" in w for w in warnings), warnings
    backend.initialize(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                              initialization_options={"model": str(tmp_path)}))  # fmt: skip
    assert backend.options.model == tmp_path


async def test_requests_get_the_model_load_error_as_one_line(tmp_path, lm):
    from pygls.exceptions import JsonRpcInternalError

    backend, _ = _backend(tmp_path, lm)

    def missing():
        raise ValueError(f"model directory not found: {tmp_path / 'nope'}")

    backend._load = missing
    try:
        await asyncio.wait_for(backend.start(), timeout=60)
        assert backend.status.state == "error"
        with pytest.raises(JsonRpcInternalError) as err:
            await _complete(backend, backend.root)
        assert str(err.value) == f"kvblend is not serving: model directory not found: {tmp_path / 'nope'}"
        with pytest.raises(JsonRpcInternalError):
            await backend.capsule("kvblend/capsule.list", {})
    finally:
        backend.shutdown()
