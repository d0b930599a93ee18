"""Capsules in the Completer: snapshots at new contexts, undo back to a captured state with no prefill,
resume + append equal to building from scratch, fingerprints refused."""

from __future__ import annotations

import dataclasses

import pytest

from blend.loader import load_model
from capsule import CapsuleConfig, CapsuleStore
from indexer import Indexer, IndexerConfig
from kvblend.completer import Completer
from kvblend.completion import CompletionRequest
from kvblend.settings import Settings

PRICES = '''"""Prices."""


def apply_discount_rate(price, rate):
    return price * (1 - rate)
'''

UNITS = '''"""Units."""


def convert_kilograms_to_pounds(kg):
    return kg * 2.20462
'''

APP_A = """from shop import prices


def sale(price):
    return prices.apply_disc
"""

APP_B = """from shop import units


def weigh(kg):
    return units.convert_kil
"""


@pytest.fixture(scope="module")
def lm():
    return load_model(None)


@pytest.fixture(scope="module")
def indexer(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("caps_ws")
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "prices.py").write_text(PRICES)
    (root / "shop" / "units.py").write_text(UNITS)
    idx = Indexer(IndexerConfig(root), lm)
    idx.index()
    yield idx
    idx.close()


def req(text: str, extra: str = "") -> CompletionRequest:
    cursor = len(text.rstrip("\n")) + len(extra)
    body = text.rstrip("\n") + extra + "\n"
    return CompletionRequest("shop/app.py", body, cursor, uri="file:///ws/shop/app.py")


SETTINGS = Settings(max_line_tokens=12, multiline="never", result_cache=0, context_tokens=48)  # one file fits


def test_undo_back_to_a_captured_state_needs_no_prefill(lm, indexer):
    store = CapsuleStore(CapsuleConfig(memory_bytes=1 << 30))
    c = Completer(lm, SETTINGS, indexer, store)
    a1 = c.complete(req(APP_A))
    assert a1.kv_path == "blend" and "snapshot" in a1.timings_ms
    b = c.complete(req(APP_B))  # another text: another context (units.py instead of prices.py), a new blend
    assert b.kv_path == "blend" and any("units.py" in x for x in b.context)
    assert len(store) == 2
    a2 = c.complete(req(APP_A))  # undo: the document is back to A with the cursor where it was
    assert a2.kv_path == "capsule"
    assert a2.tokens_prefilled == 0 and a2.tokens_reused == a1.tokens_prefilled + a1.tokens_reused
    assert a2.text == a1.text
    tree = c.capsules.tree("file:///ws/shop/app.py")
    assert len(tree.nodes) == 2


def test_resume_and_append_equals_a_cold_build(lm, indexer):
    store = CapsuleStore(CapsuleConfig(memory_bytes=1 << 30))
    c = Completer(lm, SETTINGS, indexer, store)
    c.complete(req(APP_A))
    c.complete(req(APP_B))
    typed = c.complete(req(APP_A, extra="ount"))  # back to A's context and a few characters typed
    assert typed.kv_path == "capsule" and 0 < typed.tokens_prefilled <= 8
    cold = Completer(lm, dataclasses.replace(SETTINGS, session_reuse=False), indexer)
    ref = cold.complete(req(APP_A, extra="ount"))
    assert ref.kv_path == "blend" and typed.text == ref.text


def test_capsules_spilled_to_disk_still_resume(lm, indexer, tmp_path):
    # A budget that holds one capsule: the first spills to disk and is reloaded on the undo.
    store = CapsuleStore(CapsuleConfig(memory_bytes=1, disk_dir=tmp_path / "caps"))
    c = Completer(lm, SETTINGS, indexer, store)
    a1 = c.complete(req(APP_A))
    c.complete(req(APP_B))
    assert store.stats()["on_disk"] >= 1
    a2 = c.complete(req(APP_A))
    assert a2.kv_path == "capsule" and a2.text == a1.text


def test_snapshot_on_request_restore_and_other_models_refused(lm, indexer):
    store = CapsuleStore(CapsuleConfig(memory_bytes=1 << 30))
    c = Completer(lm, SETTINGS, indexer, store)
    uri = "file:///ws/shop/app.py"
    with pytest.raises(ValueError, match="no live session"):
        c.capsule_snapshot(uri)
    c.complete(req(APP_A))
    info = c.capsule_snapshot(uri)
    assert info["uri"] == uri and info["id"] in {x["id"] for x in c.capsules.list(uri)}
    assert c.capsules.pin(info["id"])["id"] == info["id"]
    with pytest.raises(ValueError, match="unknown capsule"):
        c.capsules.pin("nope")
    # A completer of another model (another fingerprint) never resumes these capsules.
    other = dataclasses.replace(lm, fingerprint="another-model")
    c2 = Completer(other, SETTINGS, indexer, store)
    r = c2.complete(req(APP_A))
    assert r.kv_path == "blend"
