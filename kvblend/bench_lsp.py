"""Typing-session benchmark: replay keystrokes against `kvblend serve` over stdio, as an editor would.

A workspace is built from held-out standard-library packages (logging, json and collections as the repository,
the first 1,000 lines of logging/handlers.py as the file being edited: code the bundled model never saw, and the same
session whatever the project's own code looks like). A span of that file is deleted and typed back one
character at a time; after every keystroke the client sends `textDocument/didChange` and
`textDocument/inlineCompletion` and waits for the answer. Time to suggestion is measured at the client, from
sending the request to receiving the response. Two server configurations run on the identical session, one
after the other:

- `kvblend`: the defaults: blended chunk KV, the document's live session, the result cache;
- `full`: the same prompts, prefilled from scratch on every request (no blend, no session, no cache).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from kvblend.stats import percentile

# Held-out standard-library packages (never trained on; fixed by the Python installation, so the session is
# the same from one commit to the next): the typed file and the repository around it.
TYPED_REPO, TYPED_FILE = "logging", "logging/handlers.py"
CONTEXT_REPOS = ("json", "collections")
CONFIGS = {
    "kvblend": {},
    "full": {"mode": "full", "sessionReuse": False, "resultCache": 0},
}


def make_workspace(root: Path, file_lines: int = 1000) -> tuple[Path, str]:
    """Write the held-out packages into `root`; the typed file is cut to `file_lines` lines."""
    from kvblend.training.corpus import load_repos, split_repos

    _, held = split_repos(load_repos())
    repos = {r.name: r for r in held}
    missing = [n for n in (TYPED_REPO, *CONTEXT_REPOS) if n not in repos]
    if missing:
        raise ValueError(f"held-out standard-library packages not found: {missing}")
    for name in CONTEXT_REPOS + (TYPED_REPO,):
        for rel, text in repos[name].files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    path = root / TYPED_FILE
    body = "\n".join(path.read_text(encoding="utf-8").split("\n")[:file_lines]) + "\n"
    path.write_text(body, encoding="utf-8")
    return path, body


def typing_span(body: str, keystrokes: int) -> tuple[int, str]:
    """A span of `keystrokes` characters starting at a line start in the middle of the file."""
    mid = body.index("\n", len(body) // 2) + 1
    while body[mid : mid + 8].strip() == "":  # start on a line with code
        mid = body.index("\n", mid) + 1
    return mid, body[mid : mid + keystrokes]


def position_of(text: str, offset: int) -> types.Position:
    """LSP position (UTF-16 columns) of a character offset."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    col = len(text[start:offset].encode("utf-16-le")) // 2
    return types.Position(line=line, character=col)


async def replay(root: Path, path: Path, body: str, start: int, typed: str, options: dict, model: Path | None):
    cmd = [sys.executable, "-m", "kvblend", "serve"] + (["--model", str(model)] if model else [])
    client = LanguageClient("kvblend-bench", "1")
    client.feature("kvblend/status")(lambda params: None)
    await client.start_io(*cmd)
    try:
        await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                root_uri=root.as_uri(),
                workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
                initialization_options={"warmupMs": 0, **options},
            )
        )
        client.initialized(types.InitializedParams())
        t0 = time.monotonic()
        while True:
            stats = _plain(await client.protocol.send_request_async("kvblend/stats", {}))
            if stats["status"]["state"] in ("ready", "error"):
                break
            await asyncio.sleep(0.25)
        index_s = time.monotonic() - t0
        uri = path.as_uri()
        text = body[:start] + body[start + len(typed) :]
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
            )
        )
        latencies, shown = [], 0
        for i, ch in enumerate(typed):
            offset = start + i
            pos = position_of(text, offset)
            text = text[:offset] + ch + text[offset:]
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
                    content_changes=[types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
                )
            )
            cursor = position_of(text, offset + 1)
            t = time.perf_counter()
            result = await client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=cursor,
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
                )
            )
            latencies.append((time.perf_counter() - t) * 1000.0)
            shown += bool(result and result.items)
        stats = _plain(await client.protocol.send_request_async("kvblend/stats", {}))
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        await client.stop()
    c = stats["counters"]
    n = len(typed)
    return {
        "ttfs_ms_p50": round(percentile(latencies, 50), 1),
        "ttfs_ms_p95": round(percentile(latencies, 95), 1),
        "ttfs_ms_mean": round(sum(latencies) / n, 1),
        "tokens_prefilled_per_request": round(c.get("tokens_prefilled", 0) / n, 1),
        "tokens_reused_per_request": round(c.get("tokens_reused", 0) / n, 1),
        "prompt_tokens_mean": round((c.get("tokens_prefilled", 0) + c.get("tokens_reused", 0)) / n, 1),
        "blends": c.get("kv_blend", 0),
        "session_hits": c.get("kv_session", 0),
        "cache_hits": c.get("cache_hits", 0) + c.get("typed_through_hits", 0),
        "suggestions_shown": shown,
        "index_wait_s": round(index_s, 1),
        "stage_p50_ms": {k: v["p50"] for k, v in stats["latency_ms"].items()},
    }


def bench_lsp(model: Path | None = None, keystrokes: int = 200, configs: tuple[str, ...] = tuple(CONFIGS)) -> dict:
    root = Path(tempfile.mkdtemp(prefix="kvblend-typing-"))
    try:
        path, body = make_workspace(root / "ws")
        start, typed = typing_span(body, keystrokes)
        out: dict = {
            "keystrokes": len(typed),
            "file_lines": body.count("\n"),
            "typed_text_start_line": body.count("\n", 0, start) + 1,
        }
        for name in configs:
            result = asyncio.run(replay(root / "ws", path, body, start, typed, CONFIGS[name], model))
            out[name] = result
        if "kvblend" in out and "full" in out:
            out["p50_speedup"] = round(out["full"]["ttfs_ms_p50"] / max(out["kvblend"]["ttfs_ms_p50"], 1e-9), 2)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _plain(obj):
    if hasattr(obj, "_asdict"):
        return {k: _plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
