"""The Completer end to end on the bundled model and a small workspace."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from blend.loader import load_model
from indexer import Indexer, IndexerConfig
from kvblend.completer import Completer
from kvblend.completion import CompletionRequest
from kvblend.settings import Settings

HELPERS = '''"""String helpers."""


def normalize_customer_name(name):
    """Strip and title-case a customer name."""
    return name.strip().title()


def format_invoice_total(amount, currency="EUR"):
    return f"{amount:.2f} {currency}"
'''

APP = """from shop import helpers


def greeting(raw_name):
    name = helpers.normalize_customer_name(raw_name)
    return "Hello, " + name


def receipt(amount):
    total = helpers.format_invoice_total(amount)
    return total
"""


@pytest.fixture(scope="module")
def lm():
    return load_model(None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop_ws")
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "helpers.py").write_text(HELPERS)
    (root / "shop" / "app.py").write_text(APP)
    (root / "README.md").write_text("# shop\n\nHelpers for a small shop.\n")
    (root / ".env").write_text("API_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789\n")
    return root


@pytest.fixture(scope="module")
def indexer(lm, workspace):
    idx = Indexer(IndexerConfig(workspace), lm)
    idx.index()
    yield idx
    idx.close()


def request(text: str, marker: str, path: str = "shop/app.py", extra: str = "") -> CompletionRequest:
    cursor = text.index(marker) + len(marker)
    text = text[:cursor] + extra + text[cursor:]
    return CompletionRequest(path, text, cursor + len(extra))


def test_context_holds_the_imported_file(lm, indexer):
    c = Completer(lm, Settings(), indexer)
    r = c.complete(request(APP, "return total"))
    assert any(x.startswith("shop/helpers.py:") for x in r.context), r.context
    assert r.kv_path == "blend" and r.tokens_reused > 0
    assert set(r.timings_ms) >= {"prompt", "retrieve", "kv_load", "blend", "decode", "total"}
    assert ".env" not in " ".join(r.context)


@pytest.mark.parametrize("mode", ["full", "blend"])
def test_session_reuse_equals_rebuilding(lm, indexer, mode):
    """Typing on: the session path (truncate to the common prefix, prefill the rest) gives the same
    greedy completion as building the same context from scratch for the final text."""
    settings = Settings(mode=mode, max_line_tokens=16, max_tokens=16, multiline="never")
    warm = Completer(lm, settings, indexer)
    cold = Completer(lm, dataclasses_replace(settings, session_reuse=False), indexer)
    texts = [request(APP, "    name = helpers.", extra=typed) for typed in ("", "n", "no", "nor")]
    for req in texts:
        r = warm.complete(req)
    assert r.kv_path == "session" and r.tokens_prefilled <= 6 and r.tokens_reused > 100
    ref = cold.complete(texts[-1])
    assert ref.kv_path == mode
    assert r.text == ref.text


def test_prefix_mode_loads_no_chunk_kv_and_equals_full(lm, indexer, monkeypatch):
    """Mode prefix reuses the header's KV and prefills the rest from tokens: no chunk KV is loaded, and the
    completion equals full prefill of the same context."""
    loads = []
    monkeypatch.setattr(indexer, "get_kv", lambda chunk: loads.append(chunk) or pytest.fail("chunk KV loaded"))
    settings = Settings(mode="prefix", max_line_tokens=12, multiline="never", session_reuse=False)
    req = request(APP, "    name = helpers.")
    r = Completer(lm, settings, indexer).complete(req)
    monkeypatch.undo()
    ref = Completer(lm, dataclasses_replace(settings, mode="full"), indexer).complete(req)
    assert r.kv_path == "prefix" and not loads and len(r.context) > 0
    assert r.context == ref.context and r.text == ref.text
    assert r.tokens_prefilled == ref.tokens_prefilled - r.tokens_reused > 0


def test_session_prefill_matches_logits(lm, indexer):
    """The logits of the session path equal a fresh full prefill of the same tokens (mode full)."""
    settings = Settings(mode="full", max_line_tokens=1, multiline="never")
    c = Completer(lm, settings, indexer)
    a = request(APP, "    name = helpers.")
    b = request(APP, "    name = helpers.", extra="norm")
    c.complete(a)
    timings: dict = {}
    logits, session, n, info = c._prepare(b, timings)
    assert info["kv_path"] == "session"
    tokens = torch.tensor(session.tokens[:n])
    ref = lm.model.prefill(tokens, lm.model.new_cache(n))
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_typed_through_and_repeat_answer_without_the_model(lm, indexer):
    c = Completer(lm, Settings(mode="naive", max_line_tokens=12, multiline="never"), indexer)
    req = request(APP, "    total = ")
    first = c.complete(req)
    assert first.source == "model"
    # What the cache answers does not depend on what the model said: pin the shown suggestion.
    shown = "helpers.format_invoice_total(amount)"
    c._shown.remember(req.path, req.text, req.cursor, shown)
    again = c.complete(req)
    assert (again.source, again.text) == ("cache", shown)
    nxt = c.complete(request(APP, "    total = ", extra="help"))
    assert (nxt.source, nxt.text) == ("typed_through", shown[4:])
    # Typing something else, or the same at another place, is not a hit.
    assert c.complete(request(APP, "    total = ", extra="hx")).source == "model"
    assert c.complete(request(APP, "    name = ", extra="help")).source == "model"
    # Typed all of it: nothing left to show from the cache, the model is asked.
    assert c.complete(request(APP, "    total = ", extra=shown)).source == "model"
    counters = c.snapshot_stats()["counters"]
    assert counters["cache_hits"] == 1 and counters["typed_through_hits"] == 1


def test_cancelled_request_stops_between_decode_steps(lm, indexer):
    c = Completer(lm, Settings(max_tokens=64, multiline="always"), indexer)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3  # true from the 4th poll on: after the model started decoding

    r = c.complete(request(APP, "def receipt(amount):\n"), cancelled)
    assert r.stop_reason == "cancelled" and r.text == ""
    assert c.snapshot_stats()["counters"]["superseded"] == 1
    # Cancelled before the model runs: nothing computed.
    r2 = c.complete(request(APP, "def greeting(raw_name):\n"), lambda: True)
    assert r2.stop_reason == "cancelled" and "decode" not in r2.timings_ms


def test_secrets_are_never_completed(lm, indexer):
    c = Completer(lm, Settings(), indexer)
    r = c.complete(CompletionRequest(".env", "API_TOKEN=", 10))
    assert (r.text, r.stop_reason) == ("", "skipped")
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n"
    r = c.complete(CompletionRequest("shop/keys.py", key, len(key)))
    assert r.stop_reason == "skipped"
    r = c.complete(CompletionRequest("shop/.ENV", "API_TOKEN=", 10))  # names in any case
    assert r.stop_reason == "skipped"
    # a cursor deep inside a long key block: its BEGIN line lies before the prompt's window, only key lines in it
    body = "".join(f"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w{i:04d}\n" for i in range(120))
    code = "".join(f"value_{i} = {i}\n" for i in range(400))
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + body + "-----END OPENSSH PRIVATE KEY-----\n" + code
    cursor = text.index("0100\n")
    assert cursor > Settings().prefix_tokens * 3  # past any window start at 0
    req = CompletionRequest("shop/deploy.py", text, cursor)
    assert c.complete(req).stop_reason == "skipped"
    sessions = set(c._sessions)
    c.warm(req)  # the idle warm-up refuses it too: nothing prefilled, no session kept
    assert c.stats.counters["warmups"] == 0 and set(c._sessions) == sessions
    # once the window has left the block, the file completes again
    after = CompletionRequest("shop/deploy.py", text, len(text))
    assert c.complete(after).stop_reason != "skipped"


def test_time_budget_and_bad_cursor(lm, indexer):
    c = Completer(lm, Settings(time_budget_ms=1, max_tokens=64, multiline="always"), indexer)
    r = c.complete(request(APP, "def receipt(amount):\n"))
    assert r.stop_reason in ("time", "eos", "stop")
    with pytest.raises(ValueError, match="cursor"):
        c.complete(CompletionRequest("shop/app.py", "abc", 9))


def test_no_index_local_prompt_only(lm):
    c = Completer(lm, Settings(), None)
    r = c.complete(request(APP, "    return total"))
    assert r.context == [] and r.kv_path == "full"


def test_cli_complete_prints_only_the_text(workspace):
    app = workspace / "shop" / "app.py"
    line = APP.split("\n").index("    return total") + 1
    args = [sys.executable, "-m", "kvblend", "complete", "--settings", '{"timeBudgetMs": 600000}', "--file", str(app)]
    args += ["--line", str(line), "--col", "17"]  # no time budget: the two runs must agree
    out = subprocess.run([*args, "--workspace", str(workspace), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout)
    assert any(c.startswith("shop/helpers.py") for c in result["context"])
    plain = subprocess.run([*args, "--workspace", str(workspace)], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and plain.stdout == result["text"]
    bad = subprocess.run([*args[:-1], "99"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "column 99 outside line" in bad.stderr


def dataclasses_replace(settings: Settings, **kw) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **kw)


def test_cli_complete_refuses_binary_and_non_utf8(tmp_path):
    binary = tmp_path / "blob.py"
    binary.write_bytes(b"x = 1\n\x00\x01\x02")
    latin = tmp_path / "latin.py"
    latin.write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    for path, message in ((binary, "binary file"), (latin, "not UTF-8")):
        args = ["complete", "--file", str(path), "--line", "1", "--col", "1", "--no-index"]
        out = subprocess.run([sys.executable, "-m", "kvblend", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and message in out.stderr and out.stdout == ""


def test_result_cache_zero_is_off_and_first_token_is_reported(lm, indexer):
    c = Completer(lm, Settings(mode="full", result_cache=0, session_reuse=False, max_line_tokens=4), indexer)
    req = request(APP, "    total = ")
    a, b = c.complete(req), c.complete(req)
    assert a.source == b.source == "model" and a.text == b.text  # asked again: the model runs again
    ids = lm.tokenizer.encode(a.text) if a.text else []
    assert a.first_token >= 0 and (not ids or a.text.startswith(lm.tokenizer.decode([a.first_token])))


def test_background_precompute_yields_to_requests(lm, indexer):
    """While a request or a warm-up runs, the precompute workers start no new chunk."""
    c = Completer(lm, Settings(), indexer)
    held = []
    run, prepare = c._run, c._prepare
    c._run = lambda *a: (held.append(indexer.queue._held), run(*a))[1]
    c._prepare = lambda *a: (held.append(indexer.queue._held), prepare(*a))[1]
    c.complete(request(APP, "return total"))
    c.warm(request(APP, "return total", extra=" "))
    assert held and all(h == 1 for h in held) and indexer.queue._held == 0


def test_prompt_fits_the_model_window(lm):
    # settings allow 64k-token windows; the bundled model has 4096 positions (it prefilled 44k tokens before)
    s = Settings(prefix_tokens=1 << 16, suffix_tokens=1 << 16, max_tokens=8, max_line_tokens=8, mode="none")
    c = Completer(lm, s, None)
    text = "".join(f"value_{i} = compute({i}, scale=2)\n" for i in range(6000))
    r = c.complete(CompletionRequest("big.py", text, len(text) // 2))
    assert 2048 < r.tokens_prefilled + r.tokens_reused + 8 <= lm.config.max_position_embeddings


def test_retrieval_query_leaves_out_the_cursor_line_in_a_lone_cr_file(lm, indexer, monkeypatch):
    c = Completer(lm, Settings(), indexer)
    seen = []
    select = c.retriever.select
    monkeypatch.setattr(c.retriever, "select", lambda chunks, rr, budget: seen.append(rr) or select(chunks, rr, budget))
    text = APP.replace("\n", "\r")  # an old Mac file: lone CR line ends
    c.complete(request(text, "return tot"))
    # the query is the document without the line being typed (typing within it keeps the same chunks)
    assert "helpers.normalize_customer_name" in seen[0].text and "return tot" not in seen[0].text


def test_cli_complete_outside_a_repository_indexes_nothing(tmp_path):
    # a file in no git repository: its directory (a home directory, say) is not walked and no cache is written
    (tmp_path / "other.py").write_text("def helper():\n    return 1\n")
    f = tmp_path / "x.py"
    f.write_text("def main():\n    return hel\n")
    args = [sys.executable, "-m", "kvblend", "complete", "--file", str(f), "--line", "2", "--col", "15", "--json"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["context"] == [] and "--workspace" in out.stderr
    assert not (tmp_path / ".kvblend").exists()
