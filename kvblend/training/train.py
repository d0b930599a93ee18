"""Train the bundled default model (seeded, resumable; CPU by default, CUDA when present).

    python -m kvblend.training.train --steps 6000 --out models/kvblend-tiny-py

Three phases: short sequences of repeated spans only (many cheap optimizer steps, where induction heads
form), a copy-heavy mix (repeated spans and cross-file definition-then-use samples), then repository-level
code (half of it FIM) with copy samples kept in.
Progress, held-out loss and the induction ratio are logged every `--eval-every` steps; a checkpoint in
`--work` lets a killed run resume where it stopped.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from blend.config import ModelConfig, RopeConfig
from blend.loader import load_model
from blend.model import Transformer
from blend.tokenizer import Tokenizer
from kvblend.training import probes
from kvblend.training.corpus import load_repos, split_repos
from kvblend.training.export import export_checkpoint
from kvblend.training.samples import SampleMaker, name_words, train_tokenizer

log = logging.getLogger(__name__)

# The shipped architecture: 6 layers x 256 with a narrow MLP. Depth is what makes blending pay (layers 0-1 run
# for every context token, the rest for ~15% of them); the narrow MLP keeps training speed near that of 4
# layers with a 3x MLP. Measurements behind the choice are in MODEL_CARD.md.
TINY = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=4096,
    dim=256,
    n_layers=6,
    n_heads=4,
    n_kv_heads=2,
    head_dim=64,
    intermediate_size=512,
    norm_eps=1e-5,
    rope=RopeConfig(theta=10000.0),
    max_position_embeddings=4096,
    tie_embeddings=True,
    eos_token_ids=(0,),
)

PRESETS = {
    "tiny": TINY,
    # The first stage of a grown model: the shipped width in 2 layers, where induction heads form in fewer
    # steps; `--init-from` its checkpoint with `--preset tiny` stacks 4 more layers on top (see `grow`).
    "tiny2": dataclasses.replace(TINY, n_layers=2, sliding_windows=()),
    # For tests of the training loop itself: seconds per step on a laptop-class CPU.
    "micro": dataclasses.replace(
        TINY,
        vocab_size=384,
        dim=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        sliding_windows=(),
    ),  # fmt: skip
}

# Sample mix per phase: kind -> weight.
PHASES = {
    "induct": {"twice": 1.0},
    "copy": {"repeat": 0.6, "defuse": 0.3, "repo": 0.1},
    "main": {"repo": 0.5, "defuse": 0.25, "repeat": 0.25},
}


@dataclasses.dataclass
class TrainArgs:
    out: Path
    work: Path
    steps: int
    copy_steps: int
    induct_steps: int
    induct_seq_len: int
    seq_len: int
    batch: int
    copy_batch: int
    lr: float
    warmup: int
    seed: int
    eval_every: int
    init_from: Path | None
    device: str
    max_minutes: float
    preset: str = "tiny"
    corpus_root: Path | None = None
    induct_id_bound: int = 0  # 0: random spans over the whole vocabulary
    workers: int = 0  # processes making batches ahead of the optimizer (a GPU outruns one Python process)


def phase_at(step: int, a: TrainArgs) -> str:
    """induct (short pure-repeat sequences) -> copy (copy-heavy mix) -> main (code with copy samples)."""
    if step < a.induct_steps:
        return "induct"
    return "copy" if step < a.induct_steps + a.copy_steps else "main"


def lr_at(step: int, a: TrainArgs) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    frac = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def grow(small: Transformer, cfg: ModelConfig) -> Transformer:
    """A deeper model computing exactly what `small` computes: small's layers first, then new layers whose
    output projections (o_proj, down_proj) are zero, so each new block starts as the identity and training
    brings it in. What the small model learnt (induction heads) stays in the bottom layers."""
    if (cfg.dim, cfg.vocab_size, cfg.n_heads, cfg.n_kv_heads) != (
        small.cfg.dim,
        small.cfg.vocab_size,
        small.cfg.n_heads,
        small.cfg.n_kv_heads,
    ) or cfg.n_layers < small.cfg.n_layers:
        raise ValueError(f"cannot grow {small.cfg.n_layers} layers x {small.cfg.dim} into {cfg.n_layers} x {cfg.dim}")
    big = Transformer(cfg)
    init_weights(big)
    missing, unexpected = big.load_state_dict(small.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("layers.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for blk in big.layers[small.cfg.n_layers :]:
            blk.self_attn.o_proj.weight.zero_()
            blk.mlp.down_proj.weight.zero_()
    return big


def init_weights(model: Transformer) -> None:
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = (
                0.02 / math.sqrt(2 * model.cfg.n_layers)
                if name.endswith(("o_proj.weight", "down_proj.weight"))
                else 0.02
            )
            torch.nn.init.normal_(p, 0.0, std)


def batch_rows(maker: SampleMaker, a: TrainArgs, step: int) -> np.ndarray:
    """The token rows of optimizer step `step`: [batch, seq_len + 1]. A function of (seed, step) alone, so any
    worker process can make any step's batch and a resumed run sees the data an uninterrupted one would."""
    phase = phase_at(step, a)
    maker.rng.seed(f"{a.seed}:{step}")
    maker.seq_len = a.induct_seq_len if phase == "induct" else a.seq_len
    maker.random_id_bound = a.induct_id_bound if phase == "induct" and a.induct_id_bound else maker.n_regular
    kinds, weights = zip(*PHASES[phase].items(), strict=True)
    n = a.batch if phase == "main" else a.copy_batch
    return np.array([maker.sample(maker.rng.choices(kinds, weights)[0]) for _ in range(n)], dtype=np.int64)


_WORKER_MAKER: SampleMaker | None = None  # one per worker process, built by `_init_worker`
_WORKER_ARGS: TrainArgs | None = None


def _init_worker(tok_json: str, repos, words: list[str], a: TrainArgs) -> None:
    global _WORKER_MAKER, _WORKER_ARGS
    from tokenizers import Tokenizer as HFTokenizer

    _WORKER_MAKER = SampleMaker(Tokenizer(HFTokenizer.from_str(tok_json), (0,)), repos, words, a.seq_len, a.seed)
    _WORKER_ARGS = a


def _worker_rows(step: int) -> np.ndarray:
    assert _WORKER_MAKER is not None and _WORKER_ARGS is not None
    return batch_rows(_WORKER_MAKER, _WORKER_ARGS, step)


class Batches:
    """Batches for steps start, start + 1, ... made in this process, or `a.workers` processes ahead."""

    def __init__(self, maker: SampleMaker, a: TrainArgs, tok_json: str, start: int) -> None:
        self.maker, self.a, self.next = maker, a, start
        self.pool, self.ahead = None, collections.deque()
        if a.workers > 0:
            # fork: the workers inherit the corpus instead of unpickling it; they never touch torch or CUDA
            ctx = multiprocessing.get_context("fork")
            self.pool = ctx.Pool(a.workers, _init_worker, (tok_json, maker.repos, maker.words, a))

    def get(self, step: int) -> np.ndarray:
        if self.pool is None:
            return batch_rows(self.maker, self.a, step)
        while self.next < min(step + 2 * self.a.workers, self.a.steps) or not self.ahead:
            self.ahead.append((self.next, self.pool.apply_async(_worker_rows, (self.next,))))
            self.next += 1
        queued, result = self.ahead.popleft()
        assert queued == step, (queued, step)
        return result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


def train(a: TrainArgs) -> dict:
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: fp32 weights, tensor-core speed
    arch = PRESETS[a.preset]
    repos = load_repos(a.corpus_root)
    train_repos, held_repos = split_repos(repos)
    if not held_repos:  # a small corpus may hash no repository into the held-out set
        train_repos, held_repos = repos[1:], repos[:1]
    a.work.mkdir(parents=True, exist_ok=True)
    tok_path = a.work / "tokenizer.json"
    if a.init_from is not None:
        lm = load_model(a.init_from, device="cpu", dtype=torch.float32)
        model, hf_tok_json = lm.model, (a.init_from / "tokenizer.json").read_text()
        if arch.n_layers > model.cfg.n_layers:
            log.info("growing %d layers into %d", model.cfg.n_layers, arch.n_layers)
            model = grow(model, dataclasses.replace(arch, eos_token_ids=model.cfg.eos_token_ids))
        model.requires_grad_(True).train()
    else:
        if not tok_path.exists():
            tok_path.write_text(train_tokenizer(train_repos, arch.vocab_size).to_str())
        hf_tok_json = tok_path.read_text()
        model = Transformer(arch)
        init_weights(model)
    tok_path.write_text(hf_tok_json)
    tok = Tokenizer.from_dir(a.work)
    words = name_words(train_repos)
    maker = SampleMaker(tok, train_repos, words, a.seq_len, a.seed)
    model = model.to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95)
    )
    step, history, tokens_seen = 0, [], 0
    ckpt = a.work / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history, tokens_seen = state["step"], state["history"], state["tokens_seen"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from step %d", step)
    batches = Batches(maker, a, hf_tok_json, step)
    try:
        return _loop(a, model, opt, batches, tok, held_repos, hf_tok_json, step, history, tokens_seen)
    finally:
        batches.close()


def _loop(a, model, opt, batches, tok, held_repos, hf_tok_json, step, history, tokens_seen) -> dict:
    ckpt, dev, arch = a.work / "ckpt.pt", model.device, model.cfg
    t_start, t_log, running, tokens_at_log = time.time(), time.time(), [], tokens_seen
    while step < a.steps:
        phase = phase_at(step, a)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a)
        batch = torch.from_numpy(batches.get(step)).to(dev)  # [batch, seq_len + 1]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += batch.shape[0] * (batch.shape[1] - 1)
        running.append(loss.item())
        out_of_time = (time.time() - t_start) / 60 > a.max_minutes
        if step % a.eval_every == 0 or step == a.steps or out_of_time:
            model.eval()
            ind = probes.induction_ratio(model, arch.vocab_size, n=16)
            held = probes.held_out_loss(model, tok, held_repos, a.seq_len, max_windows=16)
            model.train()
            rate = (tokens_seen - tokens_at_log) / (time.time() - t_log)
            entry = {"step": step, "phase": phase, "train_loss": round(sum(running) / len(running), 3),
                     "held_out_loss": round(held, 3), "induction": ind, "tokens_seen": tokens_seen,
                     "tok_s": round(rate), "lr": round(lr_at(step, a), 6)}  # fmt: skip
            history.append(entry)
            log.info(json.dumps(entry))
            running, t_log, tokens_at_log = [], time.time(), tokens_seen
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                        "tokens_seen": tokens_seen, "torch_rng": torch.get_rng_state()}, ckpt)  # fmt: skip
            export_checkpoint(model, hf_tok_json, a.out)
            (a.out / "train_history.json").write_text(json.dumps(history, indent=1) + "\n")
        if out_of_time:
            log.info("stopping at step %d: --max-minutes reached", step)
            break
    return {"step": step, "tokens_seen": tokens_seen, "history": history}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/kvblend-tiny-py"))
    p.add_argument("--work", type=Path, default=Path("runs/train"), help="checkpoints for resuming")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--copy-steps", type=int, default=500, help="steps of the copy-heavy mix after the induct phase")
    p.add_argument("--induct-steps", type=int, default=2500, help="steps of short pure-repeat sequences first")
    p.add_argument("--induct-seq-len", type=int, default=128)
    p.add_argument("--induct-id-bound", type=int, default=0, help="random span ids below this in the induct phase")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--copy-batch", type=int, default=8, help="batch of the induct and copy phases")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--init-from", type=Path, default=None, help="continue from a checkpoint directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-minutes", type=float, default=float("inf"), help="stop (and export) after this long")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="batch-making processes (0: in this process)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--corpus-root", type=Path, default=None, help="a folder of .py files (default: the stdlib)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    train(TrainArgs(**{k: v for k, v in vars(args).items() if k in fields}))


if __name__ == "__main__":
    main()
