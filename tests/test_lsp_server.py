"""End-to-end: the real `kvblend serve` subprocess driven over stdio by pytest-lsp, on a fixture workspace."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from lsp_server.methods import plain
from tests.geometry_workspace import make_workspace as geometry_workspace

MAIN = '''from geometry import shapes


def diagonal(width, height):
    """The diagonal of a width x height rectangle."""
    return shapes.compute_hyp
'''

README = "# fixture\n\nA tiny workspace for the language server tests.\n"


def make_workspace(root: Path) -> Path:
    geometry_workspace(root, MAIN, README)
    (root / "blob.bin").write_bytes(bytes(range(256)) * 64)  # a binary file the indexer must skip
    return root


SERVER = [sys.executable, "-m", "kvblend", "serve"]


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, tmp_path):
    root = make_workspace(tmp_path / "ws")
    lsp_client.statuses = []
    lsp_client.feature("kvblend/status")(lambda params: lsp_client.statuses.append(params))
    caps = types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(
            did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True)
        ),
    )
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=caps,
            root_uri=root.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="ws")],
            initialization_options={"debounceMs": 20, "warmupMs": 0, "recomputeRatio": 7, "mode": "bogus"},
        )
    )
    lsp_client.root = root
    await wait_ready(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def stats(client: LanguageClient) -> dict:
    return plain(await client.protocol.send_request_async("kvblend/stats", {}))


async def wait_ready(client: LanguageClient, timeout: float = 120.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = await stats(client)
        state = s["status"]["state"]
        if state == "ready":
            return s
        assert state != "error", s["status"]
        await asyncio.sleep(0.2)
    raise AssertionError("server did not become ready")


async def send_raw(client: LanguageClient, msg_id: str, method: str, params) -> object:
    """Send a request as raw JSON (no client-side typing) and await its response."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    client.protocol._request_futures[msg_id] = fut
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    client.protocol.writer.write(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=30)


def open_doc(client: LanguageClient, path: Path, text: str | None = None, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=version, text=path.read_text() if text is None else text
            )
        )
    )
    return uri


def inline(client: LanguageClient, uri: str, line: int, character: int):
    return client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
    )


async def test_cross_file_identifier_in_blended_context(client: LanguageClient, record_property):
    # Invalid initializationOptions: defaults kept, one warning shown per problem, and the server works.
    warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
    assert any("recompute_ratio" in w for w in warnings) and any("mode" in w for w in warnings), warnings
    s = await stats(client)
    assert s["settings"]["recompute_ratio"] == 0.15 and s["settings"]["mode"] == "blend"
    # Indexing reported $/progress from begin to end and kvblend/status up to ready.
    reports = client.progress_reports["kvblend-indexing"]
    assert isinstance(reports[0], types.WorkDoneProgressBegin) and isinstance(reports[-1], types.WorkDoneProgressEnd)
    assert client.statuses and client.statuses[-1].state == "ready"

    uri = open_doc(client, client.root / "app" / "main.py")
    last = MAIN.rstrip("\n").split("\n")
    result = await inline(client, uri, len(last) - 1, len(last[-1]))
    s = await stats(client)
    context = s["last"]["context"]
    assert any(c.startswith("geometry/shapes.py:") for c in context), context
    assert s["last"]["kv_path"] == "blend"
    assert s["last"]["tokens_reused"] > 0
    text = result.items[0].insert_text if result.items else ""
    completed = text.startswith("otenuse_length")
    record_property("completed_identifier", completed)
    print(f"\ncross-file completion: {text!r} (identifier completed: {completed})")


async def test_newer_request_supersedes_older(client: LanguageClient):
    path = client.root / "app" / "main.py"
    uri = open_doc(client, path)
    before = (await stats(client))["counters"]
    lines = MAIN.rstrip("\n").split("\n")
    line, col = len(lines) - 1, len(lines[-1])
    pending, sent_at, version = [], [], 1
    for i in range(20):
        version += 1
        ch = "ena"[i % 3]
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(line, col), types.Position(line, col)), text=ch
                    )
                ],
            )
        )
        col += 1
        sent_at.append(time.perf_counter())
        pending.append(asyncio.ensure_future(inline(client, uri, line, col)))
    answered_at = [None] * 20
    for i, fut in enumerate(pending):
        fut.add_done_callback(lambda _f, i=i: answered_at.__setitem__(i, time.perf_counter()))
    results = await asyncio.gather(*pending)
    after = (await stats(client))["counters"]
    assert after.get("finished", 0) - before.get("finished", 0) == 1
    assert after.get("superseded", 0) - before.get("superseded", 0) == 19
    assert all(not r.items for r in results[:-1])
    # A superseded request answers without waiting for the one that replaced it to finish.
    waits = [answered_at[i] - sent_at[i] for i in range(19)]
    assert max(waits) < 5.0, waits


async def test_bad_input_gets_errors_and_server_keeps_serving(client: LanguageClient):
    # A malformed request (params of the wrong shape), written raw: the typed client could not send it.
    with pytest.raises(Exception) as err:
        await send_raw(client, "bad-1", "textDocument/inlineCompletion", {"textDocument": 5})
    assert "nvalid" in str(err.value) or "-32602" in str(err.value), err.value
    with pytest.raises(Exception) as err:
        await send_raw(client, "bad-2", "kvblend/noSuchMethod", {})
    assert "-32601" in str(err.value) or "not found" in str(err.value).lower(), err.value
    # A document the client never opened.
    with pytest.raises(Exception, match="unknown document"):
        await inline(client, (client.root / "nope.py").as_uri(), 0, 0)
    # A position past the end of a document.
    uri = open_doc(client, client.root / "app" / "main.py")
    with pytest.raises(Exception, match="outside"):
        await inline(client, uri, 500, 0)
    # Malformed custom notifications are logged, not fatal.
    client.protocol.notify("kvblend/didAcceptCompletion", {"uri": 3})

    # A 5 MB document: answered within the time budget, neither crash nor stall.
    big_path = client.root / "big.py"
    body = "".join(f"value_{i} = compute({i}, {i + 1})\n" for i in range(200_000))[: 5 << 20]
    big_uri = open_doc(client, big_path, text=body)
    t0 = time.perf_counter()
    lines = body.split("\n")
    await asyncio.wait_for(inline(client, big_uri, len(lines) // 2, 4), timeout=60)
    print(f"\n5 MB document answered in {time.perf_counter() - t0:.2f} s")
    # A binary document: no suggestion, no crash.
    bin_uri = open_doc(client, client.root / "blob.bin", text="\x00\x01\x02 binary \x00 data\n")
    result = await inline(client, bin_uri, 0, 3)
    assert not result.items

    # Still serving: a normal request completes and the stats answer.
    result = await inline(client, uri, 5, len("    return shapes.compute_hyp"))
    assert isinstance(result, types.InlineCompletionList)
    s = await stats(client)
    assert s["counters"]["finished"] >= 2
    assert s["server"].get("binary_skipped", 0) == 1


async def test_completion_fallback_settings_and_feedback(client: LanguageClient):
    uri = open_doc(client, client.root / "app" / "main.py")
    # A valid configuration change applies; an invalid value is refused with a warning.
    n_warn = len(client.messages)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"kvblend": {"maxLineTokens": 8, "fimOrder": "sideways"}})
    )
    s = await stats(client)
    assert s["settings"]["max_line_tokens"] == 8 and s["settings"]["fim_order"] == "auto"
    assert any("fim_order" in m.message for m in client.messages[n_warn:])
    # textDocument/completion: one item inserting the same text inline completion would show.
    completion = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=5, character=29)
        )
    )
    s = await stats(client)
    if completion.items:
        item = completion.items[0]
        assert item.text_edit.range.start == types.Position(line=5, character=29)
        assert item.text_edit.new_text
    else:
        assert s["last"]["stop_reason"] in ("eos", "stop", "max_tokens")
    # Feedback notifications are counted; a partial accept is recognised.
    shown = {"uri": uri, "text": "otenuse_length(a, b)"}
    client.protocol.notify("kvblend/didShowCompletion", shown)
    client.protocol.notify("kvblend/didAcceptCompletion", shown | {"acceptedLength": 7})
    s = await stats(client)
    assert s["server"]["shown"] == 1 and s["server"]["accepted"] == 1 and s["server"]["accepted_partial"] == 1
    assert s["server"]["accepted_chars"] == 7 and s["acceptance_rate"] == 1.0
    assert s["stores"]["index_chunks"] >= 3
    assert "blob.bin" not in " ".join(s["last"]["context"])


async def test_capsule_commands(client: LanguageClient):
    uri = open_doc(client, client.root / "app" / "main.py")
    send = client.protocol.send_request_async
    with pytest.raises(Exception, match="no live session"):
        await send("kvblend/capsule.snapshot", {"uri": uri})
    await inline(client, uri, 5, len("    return shapes.compute_hyp"))
    caps = plain(await send("kvblend/capsule.list", {"uri": uri}))
    assert len(caps) == 1 and caps[0]["uri"] == uri  # taken automatically after the blend
    snap = plain(await send("kvblend/capsule.snapshot", {"uri": uri}))
    assert snap["uri"] == uri and snap["id"] != caps[0]["id"]
    assert {c["id"] for c in plain(await send("kvblend/capsule.list", {}))} == {caps[0]["id"], snap["id"]}
    fork = plain(await send("kvblend/capsule.fork", {"id": snap["id"], "n": 2}))
    assert len(fork["branches"]) == 2
    assert plain(await send("kvblend/capsule.restore", {"id": caps[0]["id"]}))["id"] == caps[0]["id"]
    # The next request reuses state (the live session, or the restored capsule): no new blend.
    await inline(client, uri, 5, len("    return shapes.compute_hy"))
    s = await stats(client)
    assert s["last"]["kv_path"] in ("session", "capsule") and s["last"]["tokens_prefilled"] < s["last"]["tokens_reused"]
    assert plain(await send("kvblend/capsule.drop", {"id": snap["id"]})) == {"dropped": True}
    assert plain(await send("kvblend/capsule.drop", {"id": snap["id"]})) == {"dropped": False}
    with pytest.raises(Exception, match="must be a int"):
        await send("kvblend/capsule.fork", {"id": snap["id"], "n": "two"})
    with pytest.raises(Exception, match="unknown capsule"):
        await send("kvblend/capsule.restore", {"id": "nope"})


async def test_agent_edits_pass_the_ledger(client: LanguageClient):
    applied = []

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        applied.append(params.edit)
        return types.ApplyWorkspaceEditResult(applied=True)

    main = client.root / "app" / "main.py"
    uri = open_doc(client, main)
    edit = {"changes": {uri: [{"range": {"start": {"line": 5, "character": 11}, "end": {"line": 5, "character": 29}},
                               "newText": "shapes.compute_hypotenuse_length(width, height)"}]}}  # fmt: skip
    result = plain(await client.protocol.send_request_async("kvblend/applyAgentEdit", {"edit": edit}))
    assert result["decision"] == "allow" and result["applied"] is True
    assert len(applied) == 1 and next(iter(applied[0].changes)) == uri
    # Denied: a change inside .git, and a private key written into a file; the client is not asked.
    git_uri = (client.root / ".git" / "config").as_uri()
    deny = {"documentChanges": [{"kind": "create", "uri": git_uri}]}
    result = plain(await client.protocol.send_request_async("kvblend/applyAgentEdit", {"edit": deny}))
    assert result["decision"] == "deny" and result["applied"] is False and result["reasons"]
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
    secret = {"changes": {uri: [{"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                                 "newText": key}]}}  # fmt: skip
    result = plain(await client.protocol.send_request_async("kvblend/applyAgentEdit", {"edit": secret}))
    assert result["decision"] == "deny" and len(applied) == 1
    with pytest.raises(Exception, match="not a WorkspaceEdit|changes nothing"):
        await client.protocol.send_request_async("kvblend/applyAgentEdit", {"edit": {"changes": 5}})
    # Every decision is in the workspace's audit log.
    from ledger import verify_audit

    ok, bad = verify_audit(client.root / ".kvblend" / "audit.jsonl")
    assert ok and bad is None


async def test_idle_warmup_prepares_the_next_request(client: LanguageClient):
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"warmupMs": 50}))
    uri = open_doc(client, client.root / "app" / "main.py")
    line, col = 5, len("    return shapes.compute_hyp")
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(line, col), types.Position(line, col)), text="o"
                )
            ],
        )
    )
    t0 = time.monotonic()
    while (await stats(client))["counters"].get("warmups", 0) < 1:
        assert time.monotonic() - t0 < 30, "no warm-up happened"
        await asyncio.sleep(0.05)
    await inline(client, uri, line, col + 1)
    s = await stats(client)
    # The warm-up blended the context and prefilled the prompt: the request itself ran no blend.
    assert s["counters"].get("kv_blend", 0) == 0 and s["last"]["kv_path"] == "session"
    assert s["last"]["tokens_prefilled"] <= 2


async def test_watched_file_changes_reach_the_index(client: LanguageClient):
    before = (await stats(client))["stores"]["index_chunks"]
    seen = len(client.statuses)
    new = client.root / "geometry" / "circles.py"
    new.write_text('"""Circles."""\n\n\ndef circle_circumference(radius):\n    return 2 * 3.14159 * radius\n')
    client.workspace_did_change_watched_files(
        types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=new.as_uri(), type=types.FileChangeType.Created)]
        )
    )
    t0 = time.monotonic()
    while (await stats(client))["stores"]["index_chunks"] <= before:
        assert time.monotonic() - t0 < 30, "the new file never reached the index"
        await asyncio.sleep(0.1)
    # the update reports its progress and ends at ready (it stayed at "indexing 1/1" before)
    while len(client.statuses) == seen:
        assert time.monotonic() - t0 < 30, "the update reported no progress"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a last report is sent when the queue is empty
    assert client.statuses[-1].state == "ready" and (await stats(client))["status"]["state"] == "ready"
