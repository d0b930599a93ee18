"""Capsule behaviour probes: every resumed result is compared with a cold computation of the same request."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import pytest
import torch

from blend.kv_cache import KVCache
from capsule import CapsuleConfig, CapsuleStore, serde
from capsule.store import list_dir, verify_dir
from kvblend.capsules import CapsuleKeeper
from kvblend.completer import Completer
from kvblend.completion import CompletionRequest
from kvblend.settings import Settings
from tests import test_completer_capsules as shop
from tests.test_completer_capsules import APP_A, APP_B

lm, indexer = shop.lm, shop.indexer  # the same module-scoped fixtures: the shop workspace, indexed
URI = "file:///ws/shop/app.py"
SETTINGS = Settings(max_line_tokens=12, multiline="never", result_cache=0, context_tokens=48)  # one file fits


def req(text: str, extra: str = "") -> CompletionRequest:
    body = text.rstrip("\n") + extra + "\n"
    return CompletionRequest("shop/app.py", body, len(body) - 1, uri=URI)


def prepare(c: Completer, r: CompletionRequest) -> tuple[torch.Tensor, str]:
    """(logits [vocab] after the prompt, kv path) of one request's context + local prompt."""
    logits, _, _, info = c._prepare(r, {})
    return logits.clone(), info["kv_path"]


def cold(lm, indexer, settings: Settings, r: CompletionRequest) -> torch.Tensor:
    """The same request on a fresh completer with no session and no capsule."""
    return prepare(Completer(lm, dataclasses.replace(settings, session_reuse=False), indexer), r)[0]


@pytest.mark.parametrize(
    "changed",
    [{"mode": "full"}, {"mode": "naive"}, {"recompute_ratio": 1.0}],
    ids=["blend-to-full", "blend-to-naive", "blend-ratio"],
)
def test_a_capsule_is_not_resumed_under_another_context_mode_or_ratio(lm, indexer, tmp_path, changed):
    # Blended KV is not the KV another mode would build for the same tokens: resuming it answered as blend.
    c = Completer(lm, SETTINGS, indexer, CapsuleStore(CapsuleConfig(memory_bytes=1, disk_dir=tmp_path)))
    blend_a, path = prepare(c, req(APP_A))
    assert path == "blend"
    prepare(c, req(APP_B))  # another context: the next request for A cannot reuse the live session
    other = dataclasses.replace(SETTINGS, **changed)
    c.update_settings(other)
    logits, path = prepare(c, req(APP_A))
    assert path != "capsule"
    torch.testing.assert_close(logits, cold(lm, indexer, other, req(APP_A)), rtol=0, atol=1e-4)
    # A server started later on the same directory (capsules read back from their files) refuses them too.
    c2 = Completer(lm, other, indexer, CapsuleStore(CapsuleConfig(memory_bytes=1, disk_dir=tmp_path)))
    prepare(c2, req(APP_B))
    logits, path = prepare(c2, req(APP_A))
    assert path == "capsule"  # its own capsule of A, made under `other`
    torch.testing.assert_close(logits, cold(lm, indexer, other, req(APP_A)), rtol=0, atol=1e-4)
    # Back to blend: the first blend capsule of A resumes with its exact logits.
    c2.update_settings(SETTINGS)
    prepare(c2, req(APP_B))
    logits, path = prepare(c2, req(APP_A))
    assert path == "capsule" and torch.equal(logits, blend_a)


FULL = dataclasses.replace(SETTINGS, mode="full")  # exact KV: a resumed prompt must match a cold prefill
EDITS = {
    "undo": APP_A,
    "typed": APP_A.rstrip("\n") + "ount\n",
    "edit-far-before-cursor": APP_A.replace("def sale(price):", "def sale(price, tax):"),
    "whitespace-only": APP_A.replace("def sale(price):", "def  sale(price):"),
    "crlf": APP_A.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_exact_mode_resume_after_an_edit_matches_a_cold_prefill(lm, indexer, edit):
    # The capsule of A is resumed up to the first changed token; stale KV past an edit would show here.
    c = Completer(lm, FULL, indexer, CapsuleStore(CapsuleConfig()))
    prepare(c, req(APP_A))
    prepare(c, req(APP_B))
    logits, path = prepare(c, req(EDITS[edit]))
    assert path == "capsule"
    torch.testing.assert_close(logits, cold(lm, indexer, FULL, req(EDITS[edit])), rtol=0, atol=1e-4)


def test_two_branches_from_one_capsule_each_match_a_cold_prefill(lm, indexer):
    c = Completer(lm, FULL, indexer, CapsuleStore(CapsuleConfig()))
    prepare(c, req(APP_A))
    for extra in ("ount", "_rate"):  # each branch resumes the same capsule (the other's session is gone)
        prepare(c, req(APP_B))
        logits, path = prepare(c, req(APP_A, extra))
        assert path == "capsule"
        torch.testing.assert_close(logits, cold(lm, indexer, FULL, req(APP_A, extra)), rtol=0, atol=1e-4)


# -- the store on a directory that changes under it -----------------------------------------------------


def _capsule_of(keeper: CapsuleKeeper, tokens: list[int], text: str):
    n = len(tokens)
    cache = KVCache.from_tensors(torch.randn(2, 1, n, 4), torch.randn(2, 1, n, 4), torch.arange(n))
    return keeper.take("file:///a.py", cache, tokens, torch.randn(8), text, None)


def test_spills_go_on_after_the_directory_was_removed(tmp_path):
    d = tmp_path / "caps"
    keeper = CapsuleKeeper(CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=d)), "f" * 32)
    _capsule_of(keeper, list(range(10)), "a")
    shutil.rmtree(d)  # a cache cleanup while the server runs
    b = _capsule_of(keeper, list(range(20, 30)), "b")
    assert (d / f"{b.id}.capsule").is_file()
    got = keeper.store.get(b.id)
    assert got is not b and got.tokens == b.tokens and torch.equal(got.kv.k, b.kv.k)


def test_a_file_another_store_dropped_is_a_miss_not_damage(tmp_path, caplog):
    one = CapsuleKeeper(CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path)), "f" * 32)
    c = _capsule_of(one, list(range(10)), "a")
    two = CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path))  # a second server on the directory
    assert c.id in two
    one.drop(c.id)
    with caplog.at_level(logging.WARNING, logger="capsule.store"):
        assert two.get(c.id) is None
    assert c.id not in two and two.stats()["dropped_corrupt"] == 0 and "damaged" not in caplog.text


def test_listing_and_verifying_leave_out_files_dropped_meanwhile(tmp_path, monkeypatch):
    keeper = CapsuleKeeper(CapsuleStore(CapsuleConfig(memory_bytes=0, disk_dir=tmp_path)), "f" * 32)
    gone = _capsule_of(keeper, list(range(10)), "a")
    kept = _capsule_of(keeper, list(range(20, 30)), "b")

    def dropped_first(read):  # another store deletes the file between the directory listing and the read
        def wrapper(path, *args, **kw):
            if path.name.startswith(gone.id):
                path.unlink()
            return read(path, *args, **kw)

        return wrapper

    monkeypatch.setattr(serde, "read_info", dropped_first(serde.read_info))
    infos, damaged = list_dir(tmp_path)
    assert [i["id"] for i in infos] == [kept.id] and damaged == []
    (tmp_path / f"{gone.id}.capsule").write_bytes((tmp_path / f"{kept.id}.capsule").read_bytes())
    gone_file = tmp_path / f"{gone.id}.capsule"
    monkeypatch.setattr(serde, "read", dropped_first(serde.read))
    assert verify_dir(tmp_path) == [(tmp_path / f"{kept.id}.capsule", None)] and not gone_file.exists()


def test_undo_goes_to_the_nearest_capsule_the_store_still_has(tmp_path):
    store = CapsuleStore(CapsuleConfig())
    keeper = CapsuleKeeper(store, "f" * 32)
    a = _capsule_of(keeper, list(range(10)), "a")
    b = _capsule_of(keeper, list(range(10, 20)), "b")
    c = _capsule_of(keeper, list(range(20, 30)), "c")
    store.drop(b.id)  # evicted by a budget: the tree still names it
    assert keeper.undo("file:///a.py")["id"] == a.id
    assert keeper.pinned["file:///a.py"] == a.id and keeper.tree("file:///a.py").current == a.id
    store.drop(a.id)
    keeper.tree("file:///a.py").cursors["main"] = c.id
    assert keeper.undo("file:///a.py") is None  # nothing left to go back to: no error, no move
    assert keeper.tree("file:///a.py").current == c.id
