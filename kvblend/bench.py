"""Benchmarks that compare kvblend's engine with the transformers forward on the same weights."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from blend.loader import load_model


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_engine(
    model_dir: Path | None,
    prompt_tokens: int = 2048,
    decode_tokens: int = 32,
    device: str | None = None,
    repeats: int = 5,
) -> dict:
    """Prefill tokens/s and decode ms/token of our engine and of transformers, same checkpoint and prompt.

    The prompt is `prompt_tokens` seeded random ids; both sides compute logits for the last token only
    (transformers with logits_to_keep=1), use SDPA attention and decode greedily with a KV cache.
    Timings are the best of `repeats` runs (least disturbed by other load), ours and transformers'
    interleaved so that both see the same machine state.
    """
    import transformers

    lm = load_model(model_dir, device=device)
    dev = lm.model.device
    hf = transformers.AutoModelForCausalLM.from_pretrained(lm.path, dtype=lm.model.dtype, attn_implementation="sdpa")
    hf = hf.to(dev).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, lm.tokenizer.vocab_size, (prompt_tokens,), generator=g).to(dev)

    def ours_prefill():
        lm.model.prefill(prompt, lm.model.new_cache(prompt_tokens + decode_tokens))

    @torch.inference_mode()
    def hf_prefill():
        return hf(prompt[None], use_cache=True, logits_to_keep=1)

    def ours_decode():
        cache = lm.model.new_cache(prompt_tokens + decode_tokens)
        logits = lm.model.prefill(prompt, cache)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = lm.model.decode(int(logits.argmax()), cache)
        return time.perf_counter() - t0

    @torch.inference_mode()
    def hf_decode():
        out = hf_prefill()
        cache, logits = out.past_key_values, out.logits[0, -1]
        t0 = time.perf_counter()
        for i in range(decode_tokens):
            tok = logits.argmax().view(1, 1)
            pos = torch.tensor([[prompt_tokens + i]], device=dev)
            out = hf(tok, cache=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[0, -1]
        return time.perf_counter() - t0

    ours_prefill(), hf_prefill()  # warm-up
    prefill_s, hf_prefill_s, decode_s, hf_decode_s = [], [], [], []
    for _ in range(repeats):
        prefill_s.append(_timed(ours_prefill))
        hf_prefill_s.append(_timed(hf_prefill))
        decode_s.append(ours_decode())
        hf_decode_s.append(hf_decode())
    ours_p, hf_p = prompt_tokens / min(prefill_s), prompt_tokens / min(hf_prefill_s)
    ours_d = 1000 * min(decode_s) / decode_tokens
    hf_d = 1000 * min(hf_decode_s) / decode_tokens
    return {
        "model": str(lm.path),
        "device": str(dev),
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "prefill_tok_s": round(ours_p, 1),
        "decode_ms_per_tok": round(ours_d, 3),
        "hf_prefill_tok_s": round(hf_p, 1),
        "hf_decode_ms_per_tok": round(hf_d, 3),
        "prefill_speedup": round(ours_p / hf_p, 3),  # > 1: ours is faster
        "decode_speedup": round(hf_d / ours_d, 3),  # > 1: ours is faster
    }
