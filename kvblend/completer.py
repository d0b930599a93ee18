"""The Completer: one completion request end to end (DESIGN.md "The path of one completion request").

    request -> result cache (repeat / typed-through) -> local FIM prompt -> context chunks (retrieval)
            -> KV: the document's live session (longest common token prefix) or chunk KV blended
            -> decode with stop rules, cancellation and a time budget -> text shown + per-stage timings

A session per document keeps the KV of its last prompt and completion. With the SPM prompt order the next
keystroke's prompt shares all but its last few tokens with it, so while the retrieved chunks stay the same
(retrieval reads the text up to the cursor's line, which typing within a line does not change) a request
prefills a handful of tokens. A new set of chunks is blended from their precomputed KV.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable

import torch

from blend import cacheblend
from blend.cacheblend import BlendConfig, ChunkKV
from blend.kv_cache import KVCache
from blend.loader import LoadedModel
from blend.prompt import fim_prompt, model_fim_order, repo_header, window
from blend.sampling import Sampler, SamplingParams
from blend.tokenizer import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from capsule import CapsuleStore, resume_logits
from capsule.store import common_prefix
from indexer.chunker import Chunk
from indexer.indexer import Indexer
from indexer.retrieval import RetrievalRequest, Retriever
from indexer.secrets import is_secret_path, secret_in_span
from kvblend.capsules import CapsuleKeeper, kv_recipe
from kvblend.completion import Completion, CompletionRequest
from kvblend.engine import Engine, EngineRequest, TorchEngine
from kvblend.lines import line_bounds
from kvblend.settings import Settings
from kvblend.shown import ShownCache
from kvblend.stats import Stats
from kvblend.stops import cut as cut_text
from kvblend.stops import plan_for, trim_suffix_overlap

log = logging.getLogger(__name__)

RETRIEVAL_CHARS = 64 << 10  # retrieval reads at most this much of a document around the cursor (huge files)
# Context budgets shrink in steps of this many tokens to fit the model's window (not at every keystroke).
CONTEXT_STEP = 256
MAX_SESSIONS = 4  # live document sessions kept (each holds the KV of ~4k tokens: ~25 MB on the bundled model)


@dataclasses.dataclass
class _Session:
    keys: tuple  # chunk keys of its context (the header first)
    context: list[str]
    tokens: list[int]  # every token whose KV `cache` holds, in order
    cache: KVCache
    prompt_len: int = 0  # tokens of the last prompt (context + local prompt); generated ones follow
    prompt_logits: torch.Tensor | None = None  # [vocab] after the last prompt token (a capsule's boundary)
    uri: str = ""
    text: str = ""  # the document text of the last prompt
    version: int | None = None
    recipe: str = ""  # how its context KV was made (kv_recipe): what a capsule of it is resumed by


class Completer:
    def __init__(
        self,
        lm: LoadedModel,
        settings: Settings | None = None,
        indexer: Indexer | None = None,
        capsules: CapsuleStore | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.lm = lm
        # None or the torch engine: the Completer runs our model itself (sessions, capsules, streaming stops).
        # Another engine (vLLM) gets each request's chunk KV + local prompt and returns the tokens.
        self.engine = None if engine is None or isinstance(engine, TorchEngine) else engine
        self.capsules = CapsuleKeeper(capsules, lm.fingerprint) if capsules is not None else None
        self.settings = settings or Settings()
        self.indexer = indexer
        self.retriever = Retriever()
        self.stats = Stats()
        tok = lm.tokenizer
        specials = (tok.token_id(t) for t in (FILE_SEP, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, REPO_NAME))
        self.stop_ids = set(tok.eos_ids) | {i for i in specials if i is not None}
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        # (count, bytes) of the live sessions, kept by the model thread: stats read it from another thread,
        # where iterating `_sessions` could meet a concurrent change.
        self._sessions_size = (0, 0)
        self._shown = ShownCache(self.settings.result_cache)
        self._header: ChunkKV | None = None
        self._retrieved: tuple | None = None  # (query key, chunks) of the last retrieval
        self.last: dict = {}  # the last request that ran the model (stats, tests)
        self._lock = threading.RLock()  # one request at a time on the model
        self._model_fim_order = model_fim_order(self.lm.path)  # kvblend.json, read once (not at every request)

    @property
    def fim_order(self) -> str:
        order = self.settings.fim_order
        return self._model_fim_order if order == "auto" else order

    def update_settings(self, settings: Settings) -> None:
        with self._lock:
            if settings == self.settings:  # clients resend the whole configuration when any of it changes
                return
            self.settings = settings
            self._sessions.clear()  # windows, order or mode may have changed what a prompt is
            self._sessions_size = (0, 0)
            # A shown suggestion was made under the old settings (multiline, budgets, mode, temperature):
            # serving it again would ignore the change.
            self._shown = ShownCache(settings.result_cache)

    # -- the request ---------------------------------------------------------------------------

    def complete(self, req: CompletionRequest, cancelled: Callable[[], bool] | None = None) -> Completion:
        """Complete at `req.cursor`. `cancelled()` is polled before the model runs and between decode steps;
        once true the request returns what it has with stop_reason "cancelled"."""
        cancelled = cancelled or (lambda: False)
        t0 = time.perf_counter()
        self.stats.count("requests")
        if not 0 <= req.cursor <= len(req.text):
            raise ValueError(f"cursor {req.cursor} outside the document (length {len(req.text)})")
        if self._secret(req):
            self.stats.count("skipped_secret")
            return Completion("", "skipped", source="none")
        hit = self._lookup(req) if self.settings.result_cache > 0 else None
        if hit is not None:
            hit.timings_ms = {"total": _ms(t0)}
            self.stats.count(hit.source + "_hits")
            self.stats.record({"total": hit.timings_ms["total"]})
            return hit
        if cancelled():
            self.stats.count("superseded")
            return Completion("", "cancelled", source="none")
        with self._lock, self._precedence():
            result = self._run(req, cancelled, t0) if self.engine is None else self._run_engine(req, t0)
        self.stats.count("superseded" if result.stop_reason == "cancelled" else "finished")
        self.stats.count("tokens_prefilled", result.tokens_prefilled)
        self.stats.count("tokens_reused", result.tokens_reused)
        self.stats.count(f"kv_{result.kv_path}")
        self.stats.record(result.timings_ms)
        if result.stop_reason != "cancelled" and result.text and self.settings.result_cache > 0:
            self._shown.remember(req.path, req.text, req.cursor, result.text)
        self.last = {k: v for k, v in result.to_dict().items() if k != "text"} | {"path": req.path}
        return result

    def warm(self, req: CompletionRequest) -> None:
        """Prepare the document's session for a request like `req` (idle warm-up): chunks loaded or computed,
        context blended, local prompt prefilled; the next keystroke then only extends it."""
        if self._secret(req):
            return
        with self._lock, self._precedence():
            timings: dict[str, float] = {}
            self._prepare(req, timings)
        self.stats.count("warmups")

    def _secret(self, req: CompletionRequest) -> bool:
        """A secret file, or a local prompt window that would hold a credential: never put into a prompt."""
        start, end = window(req.text, req.cursor, *self._local_tokens())
        return is_secret_path(req.path) or secret_in_span(req.text, start, end) is not None

    def _local_tokens(self) -> tuple[int, int]:
        """(prefix, suffix) token budgets of the local prompt, cut so that it and the decode fit the model's
        window (settings allow up to 64k tokens; a model past its window is extrapolating, and slow)."""
        s, window = self.settings, self.lm.config.max_position_embeddings
        suffix = min(s.suffix_tokens, window // 4)
        return max(16, min(s.prefix_tokens, window - suffix - self._decode_tokens() - 64)), suffix

    def _decode_tokens(self) -> int:
        return max(self.settings.max_tokens, self.settings.max_line_tokens)

    def _precedence(self) -> contextlib.AbstractContextManager:
        """Background precompute starts no new chunk while a request runs: its workers and the request's torch
        threads on the same cores made a 176 ms blend take 1.5-2.3 s (README, language server)."""
        return self.indexer.queue.yielding() if self.indexer is not None else contextlib.nullcontext()

    def _run(self, req: CompletionRequest, cancelled: Callable[[], bool], t0: float) -> Completion:
        s = self.settings
        timings: dict[str, float] = {}
        plan = plan_for(req.text, req.cursor, s.multiline)
        logits, session, prompt_len, info = self._prepare(req, timings)
        budget = s.max_tokens if plan.multiline else s.max_line_tokens
        sampler = Sampler(SamplingParams(temperature=s.temperature))
        t = time.perf_counter()
        deadline = t0 + s.time_budget_ms / 1000.0
        out: list[int] = []
        shown, reason, first = "", "max_tokens", -1
        with torch.inference_mode():
            while len(out) < budget:
                token = sampler(logits)
                first = token if first < 0 else first
                if token in self.stop_ids:
                    reason = "eos"
                    break
                out.append(token)
                shown, stopped = cut_text(self.lm.tokenizer.decode(out), plan)
                if stopped:
                    reason = "stop"
                    break
                if cancelled():
                    reason = "cancelled"
                    break
                if time.perf_counter() > deadline:
                    reason = "time"
                    break
                if len(out) >= budget:
                    break
                logits = self.lm.model.decode(token, session.cache)
        timings["decode"] = _ms(t)
        session.tokens = session.tokens[:prompt_len] + out[: session.cache.n - prompt_len]
        text = trim_suffix_overlap(shown.rstrip() if plan.multiline else shown, req.text[req.cursor :])
        if reason == "cancelled":
            text = ""
        timings["total"] = _ms(t0)
        return Completion(text, reason, "model", plan.multiline, timings, info["context"], info["prefilled"],
                          info["reused"], info["kv_path"], first)  # fmt: skip

    def _run_engine(self, req: CompletionRequest, t0: float) -> Completion:
        """The request on an external engine: chunk KV (from the store) + local prompt in, greedy tokens out.
        Modes naive and prefix are our engine's baselines: another engine runs them as full prefill. Stop rules
        apply to the returned tokens; the time budget and cancellation are the engine's own (not polled)."""
        s, timings = self.settings, {}
        plan = plan_for(req.text, req.cursor, s.multiline)
        t = time.perf_counter()
        local = fim_prompt(self.lm.tokenizer, req.path, req.text, req.cursor, *self._local_tokens(),
                           self.fim_order).tokens  # fmt: skip
        chunks = self._retrieve(req, len(local))
        timings["prompt"] = _ms(t)
        t = time.perf_counter()
        kvs = [self._header_kv()] + [self.indexer.get_kv(c) for c in chunks]
        timings["kv_load"] = _ms(t)
        mode = "blend" if s.mode == "blend" and chunks else "full"
        budget = s.max_tokens if plan.multiline else s.max_line_tokens
        out = self.engine.generate(EngineRequest(kvs, local, budget, frozenset(self.stop_ids), mode, s.recompute_ratio))
        timings["engine"] = round(out.total_s * 1000.0, 3)
        timings["ttft"] = round(out.ttft_s * 1000.0, 3)
        shown, stopped = cut_text(self.lm.tokenizer.decode(out.tokens), plan)
        text = trim_suffix_overlap(shown.rstrip() if plan.multiline else shown, req.text[req.cursor :])
        timings["total"] = _ms(t0)
        n_all = sum(len(k) for k in kvs) + len(local)
        context = [f"{c.path}:{c.start_line}-{c.end_line}" for c in chunks]
        return Completion(text, "stop" if stopped else out.stop_reason, "model", plan.multiline, timings, context,
                          out.prefilled, n_all - min(out.prefilled, n_all), mode)  # fmt: skip

    # -- the KV of context + prompt ------------------------------------------------------------

    def _prepare(self, req: CompletionRequest, timings: dict[str, float]):
        """The session of `req.path` with the KV of context + local prompt; returns (last logits, session,
        prompt length in tokens, info)."""
        s, model = self.settings, self.lm.model
        t = time.perf_counter()
        local = fim_prompt(self.lm.tokenizer, req.path, req.text, req.cursor, *self._local_tokens(),
                           self.fim_order).tokens  # fmt: skip
        timings["prompt"] = _ms(t)
        t = time.perf_counter()
        chunks = self._retrieve(req, len(local))
        timings["retrieve"] = _ms(t)
        header = self._header_kv()
        keys = ("header", *(c.key for c in chunks))
        context = [f"{c.path}:{c.start_line}-{c.end_line}" for c in chunks]
        ctx_tokens = header.tokens.tolist() + [i for c in chunks for i in c.tokens]
        full = ctx_tokens + local
        session = self._sessions.get(req.path)
        if s.session_reuse and session is not None and session.keys == keys:
            n = common_prefix(session.tokens, full)
            n = min(n, len(full) - 1)  # at least one token runs, for the logits
            t = time.perf_counter()
            session.cache.truncate(n)
            with torch.inference_mode():
                logits = model.prefill(torch.tensor(full[n:], device=model.device), session.cache)
            timings["prefill"] = _ms(t)
            session.tokens = full
            self._mark(session, req, logits)
            self._sessions.move_to_end(req.path)
            return logits, session, len(full), {"context": context, "prefilled": len(full) - n, "reused": n,
                                                "kv_path": "session"}  # fmt: skip
        extra = max(s.max_tokens, s.max_line_tokens) + 16
        recipe = kv_recipe(s.mode if chunks else "full", s.recompute_ratio)  # the mode `_build` picks
        resumed = None
        if self.capsules is not None and s.session_reuse:
            t = time.perf_counter()
            resumed = self.capsules.resume(req.uri or req.path, full, len(ctx_tokens), extra, recipe)
            if resumed is not None:
                with torch.inference_mode():
                    logits = resume_logits(model, resumed.state, full[resumed.keep :])
                timings["capsule"] = _ms(t)
                cache, prefilled, kv_path = resumed.state.cache, len(full) - resumed.keep, "capsule"
        if resumed is None:
            logits, cache, prefilled, kv_path = self._build(header, chunks, ctx_tokens, local, timings)
        session = _Session(keys, context, full, cache, recipe=recipe)
        self._mark(session, req, logits)
        if self.capsules is not None and s.session_reuse and kv_path != "capsule":
            t = time.perf_counter()  # a new context: worth keeping (an undo or a return to it restores it)
            self.capsules.take(req.uri or req.path, cache, full, logits, req.text, req.version, recipe)
            timings["snapshot"] = _ms(t)
        if s.session_reuse:
            self._sessions[req.path] = session
            self._sessions.move_to_end(req.path)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            live = list(self._sessions.values())
            self._sessions_size = (len(live), sum(_cache_bytes(x.cache) for x in live))
        return logits, session, len(full), {"context": context, "prefilled": prefilled,
                                            "reused": len(full) - prefilled, "kv_path": kv_path}  # fmt: skip

    @staticmethod
    def _mark(session: _Session, req: CompletionRequest, logits: torch.Tensor) -> None:
        session.prompt_len, session.prompt_logits = len(session.tokens), logits
        session.uri, session.text, session.version = req.uri or req.path, req.text, req.version

    def _build(self, header: ChunkKV, chunks: list[Chunk], ctx_tokens: list[int], local: list[int], timings):
        """KV of context + local prompt from scratch, by the configured mode: (logits, cache, prefilled, mode)."""
        s, model = self.settings, self.lm.model
        extra = max(s.max_tokens, s.max_line_tokens) + 16
        prompt = torch.tensor(local, device=model.device)
        mode = s.mode if chunks else ("full" if s.mode != "prefix" else "prefix")
        t = time.perf_counter()
        if mode in ("full", "none"):
            tokens = torch.tensor(ctx_tokens + local, device=model.device)
            cache = model.new_cache(tokens.shape[0] + extra)
            with torch.inference_mode():
                logits = model.prefill(tokens, cache)
            timings["prefill"] = _ms(t)
            return logits, cache, tokens.shape[0], mode
        if mode == "prefix":  # the header is the exact prefix every request shares; the rest is prefilled
            rest = torch.tensor(ctx_tokens[len(header) :] + local, device=model.device)
            r = cacheblend.prefix_then(model, header, rest, extra)
            timings["prefill"] = _ms(t)
            return r.logits, r.cache, rest.shape[0], mode
        kvs = [header] + [self.indexer.get_kv(c) for c in chunks]
        timings["kv_load"] = _ms(t)
        t = time.perf_counter()
        if mode == "blend":
            r = cacheblend.blend(model, kvs, prompt, BlendConfig(recompute_ratio=s.recompute_ratio), extra)
            prefilled = int(r.selected.shape[0])
        else:  # naive
            r = cacheblend.naive(model, kvs, prompt, extra)
            prefilled = len(local)
        timings["blend"] = _ms(t)
        return r.logits, r.cache, prefilled, mode

    def _header_kv(self) -> ChunkKV:
        if self._header is None:
            name = self.indexer.cfg.repo_name if self.indexer is not None else None
            name = name or (self.indexer.cfg.root.name if self.indexer is not None else "workspace")
            ids = torch.tensor(self.lm.tokenizer.encode(repo_header(name)), device=self.lm.model.device)
            self._header = cacheblend.precompute_chunk(self.lm.model, ids, offset=0)
        return self._header

    def _retrieve(self, req: CompletionRequest, local_tokens: int) -> list[Chunk]:
        """Chunks for the request. The query is the document without the cursor's line, so that typing
        within a line (often not yet parseable) keeps the same chunks and the session's KV stays valid.
        Their budget is `context_tokens`, less what the model's window cannot hold besides the local prompt of
        `local_tokens` and the decode (in steps of CONTEXT_STEP)."""
        s = self.settings
        room = self.lm.config.max_position_embeddings - local_tokens - self._decode_tokens() - 16  # 16: repo header
        budget = min(s.context_tokens, room // CONTEXT_STEP * CONTEXT_STEP)
        if self.indexer is None or s.mode == "none" or budget <= 0:
            return []
        idx, text = self.indexer, req.text
        # the cursor's line, ended as the LSP ends lines (\n, \r\n or a lone \r: an old Mac file is one line
        # for "\n" alone, and its query was empty)
        line_start, line_end = line_bounds(text, req.cursor)
        head, tail = text[:line_start], text[line_end:]
        if len(head) > RETRIEVAL_CHARS:  # imports from the top, identifiers from near the cursor
            head = head[:8192] + "\n" + head[-RETRIEVAL_CHARS:]
        rr = RetrievalRequest(
            req.path, head + tail[: RETRIEVAL_CHARS // 4], len(head), tuple(sorted(idx.open_paths)),
            tuple(reversed(idx.recent)),
        )  # fmt: skip
        # Typing within a line leaves the query unchanged: answer from the last selection.
        digest = hashlib.blake2b(rr.text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        key = (rr.path, digest, rr.cursor, rr.open_paths, rr.recent_paths, idx.generation, budget)
        if self._retrieved is not None and self._retrieved[0] == key:
            return self._retrieved[1]
        chunks = self.retriever.select(idx.chunks(), rr, budget)
        self._retrieved = (key, chunks)
        return chunks

    def _lookup(self, req: CompletionRequest) -> Completion | None:
        hit = self._shown.lookup(req.path, req.text, req.cursor)
        if hit is None:
            return None
        text, typed = hit
        source = "cache" if typed == 0 else "typed_through"
        return Completion(text, source, source=source, multiline="\n" in text)

    # -- capsules on request (LSP kvblend/capsule.*) --------------------------------------------

    def capsule_snapshot(self, uri: str) -> dict:
        """Capture the live session of `uri` at its last prompt boundary."""
        if self.capsules is None:
            raise ValueError("capsules are off in this server")
        with self._lock:
            session = next((x for x in self._sessions.values() if x.uri == uri), None)
            if session is None or session.prompt_logits is None:
                raise ValueError(f"no live session for {uri}: request a completion in it first")
            n = session.prompt_len
            session.cache.truncate(n)  # drop generated tokens: the capsule ends at the prompt
            session.tokens = session.tokens[:n]
            c = self.capsules.take(uri, session.cache, session.tokens, session.prompt_logits, session.text,
                                   session.version, session.recipe)  # fmt: skip
            return c.info()

    # -- reporting -----------------------------------------------------------------------------

    def snapshot_stats(self) -> dict:
        out = self.stats.snapshot()
        c = out["counters"]
        served = c.get("finished", 0) + c.get("cache_hits", 0) + c.get("typed_through_hits", 0)
        out["hit_rates"] = {
            "result_cache": round((c.get("cache_hits", 0) + c.get("typed_through_hits", 0)) / served, 4)
            if served else 0.0,
            "session": round(c.get("kv_session", 0) / max(c.get("finished", 0) + c.get("superseded", 0), 1), 4),
        }  # fmt: skip
        pre, reu = c.get("tokens_prefilled", 0), c.get("tokens_reused", 0)
        out["tokens"] = {"prefilled": pre, "reused": reu, "reuse_fraction": round(reu / max(pre + reu, 1), 4)}
        n_sessions, session_bytes = self._sessions_size
        stores = {"sessions": n_sessions, "session_bytes": session_bytes}
        if self.indexer is not None:
            stores["index_chunks"] = len(self.indexer.chunks())
            stores["kv_store_bytes"] = self.indexer.store.nbytes()
            stores["precompute_queue"] = len(self.indexer.queue)
        if self.capsules is not None:
            stores["capsules"] = self.capsules.store.stats()
        out["stores"] = stores
        out["last"] = self.last
        out["settings"] = dataclasses.asdict(self.settings)
        return out


def _cache_bytes(cache: KVCache) -> int:
    k = cache.k
    return 2 * k.numel() * k.element_size()


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000.0, 3)
