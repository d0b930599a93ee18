"""Measurements of a language model's quality and in-context copying (used in training and the model card).

- held-out loss: mean next-token loss on repositories never trained on.
- induction: loss on random token sequences repeated twice, second copy vs first.
- cross-file copy: a made-up function defined in file A, used in file B after several hundred tokens of
  other code; greedy accuracy of completing the name with A in context vs without, and the log-prob gap.
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F

from blend.model import Transformer
from blend.tokenizer import FILE_SEP, REPO_NAME, Tokenizer
from kvblend.training.corpus import Repo
from kvblend.training.samples import SPECIAL_TOKENS, definition_file, made_up_name


@torch.no_grad()
def held_out_loss(model: Transformer, tok: Tokenizer, repos: list[Repo], seq_len: int, max_windows: int = 48) -> float:
    """Mean loss (nats/token) over the first `max_windows` windows of `seq_len` tokens of the held-out files."""
    windows = []
    for repo in repos:
        for _, text in repo.files:
            ids = tok.encode(text)
            for s in range(0, len(ids) - 1, seq_len):
                w = ids[s : s + seq_len + 1]
                if len(w) > 32:
                    windows.append(w)
    rng = random.Random(0)
    rng.shuffle(windows)
    total, count = 0.0, 0
    for w in windows[:max_windows]:
        x = torch.tensor(w, device=model.device)
        logits = model(x[None, :-1])[0]
        total += F.cross_entropy(logits, x[1:], reduction="sum").item()
        count += len(w) - 1
    return total / max(count, 1)


@torch.no_grad()
def induction_ratio(model: Transformer, vocab_size: int, n: int = 32, span: int = 64, seed: int = 0) -> dict:
    """Random ids repeated twice: mean loss on the second copy over the first (1 = no copying)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(len(SPECIAL_TOKENS), vocab_size, (n, span), generator=g)
    x = torch.cat([first, first], dim=1).to(model.device)
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [n, 2 span - 1]
    l1 = loss[:, : span - 1].mean().item()  # predicting tokens 1..span-1 of the first copy
    l2 = loss[:, span:].mean().item()  # predicting tokens 1..span-1 of the second copy
    return {"first_copy_loss": round(l1, 3), "second_copy_loss": round(l2, 3), "ratio": round(l2 / l1, 3)}


@dataclasses.dataclass
class CopyCase:
    with_def: list[int]  # prompt ids: file A, then file B ending in the name's first token
    without_def: list[int]  # the same without file A
    target: list[int]  # the name's remaining tokens


def copy_cases(tok: Tokenizer, repos: list[Repo], words: list[str], n: int, seed: int = 1234) -> list[CopyCase]:
    """Cases whose prompt ends after the first token of the name, tokenized exactly as in its definition
    (" name" is one pre-token in both `def name(` and `= name`), so copying is possible token by token."""
    rng = random.Random(seed)
    cases = []
    files = [(p, t) for r in repos for p, t in r.files if len(t) > 2000]
    while len(cases) < n:
        names = list(dict.fromkeys(made_up_name(rng, words) for _ in range(3)))
        name = rng.choice(names)
        name_ids = tok.encode(" " + name)
        if len(name_ids) < 2:
            continue
        path, text = rng.choice(files)
        start = text.find("\n", rng.randrange(0, len(text) - 1800)) + 1
        filler_ids = tok.encode(text[start:])[: rng.randint(300, 400)]
        filler = tok.decode(filler_ids, skip_special=False)
        filler = filler[: filler.rfind("\n") + 1]
        head = tok.encode(f"{REPO_NAME}probe\n")
        file_a = tok.encode(f"{FILE_SEP}probe/helpers.py\n{definition_file(rng, names, words)}")
        file_b = tok.encode(f"{FILE_SEP}probe/{path.rsplit('/', 1)[-1]}\n{filler}\nvalue =") + name_ids[:1]
        cases.append(CopyCase(head + file_a + file_b, head + file_b, name_ids[1:]))
    return cases


@torch.no_grad()
def _greedy(model: Transformer, ids: list[int], n_new: int) -> list[int]:
    x = list(ids)
    for _ in range(n_new):
        logits = model(torch.tensor([x], device=model.device))[0, -1]
        x.append(int(logits.argmax()))
    return x[len(ids) :]


@torch.no_grad()
def _target_logprob(model: Transformer, prompt: list[int], target: list[int]) -> float:
    x = torch.tensor([prompt + target], device=model.device)
    logp = torch.log_softmax(model(x[:, :-1])[0], dim=-1)
    idx = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)
    return logp[idx, x[0, len(prompt) :]].sum().item()


def cross_file_copy(model: Transformer, tok: Tokenizer, repos: list[Repo], words: list[str], n: int = 40) -> dict:
    """Greedy accuracy of completing the name with / without the defining file, and the mean log-prob gap
    of the name's remaining tokens (nats)."""
    hits = {"with": 0, "without": 0}
    gap = 0.0
    for case in copy_cases(tok, repos, words, n):
        for key, prompt in (("with", case.with_def), ("without", case.without_def)):
            hits[key] += _greedy(model, prompt, len(case.target)) == case.target
        with_def = _target_logprob(model, case.with_def, case.target)
        gap += with_def - _target_logprob(model, case.without_def, case.target)
    return {
        "n": n,
        "accuracy_with_def": round(hits["with"] / n, 3),
        "accuracy_without_def": round(hits["without"] / n, 3),
        "logprob_gap_nats": round(gap / n, 3),
    }
