"""Training samples for the default model: repository-level code with FIM, and copy-heavy curricula.

Every sample is a list of token ids of length `seq_len + 1` (inputs and shifted targets). Kinds:
- "repo": files of one repository joined with <|repo_name|> / <|file_sep|>; on about half of them one file
  is turned into a fill-in-the-middle example (PSM or SPM order, split at character positions).
- "defuse": a small file defining made-up functions, then several hundred tokens of real code, then uses
  of those names: the cross-file copying that completion needs.
- "repeat": spans of random token ids (or of real code) that recur later in the sequence, after a gap.
- "twice": random spans of varying length, each followed at once by itself. The copy is exact and its
  distance varies, so only matching content predicts it (at a fixed distance a model learns "copy from d
  tokens back", a positional shortcut, instead: measured, see README).
"""

from __future__ import annotations

import random
import re

from blend.tokenizer import ENDOFTEXT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME, Tokenizer
from kvblend.training.corpus import Repo

SPECIAL_TOKENS = [ENDOFTEXT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP, REPO_NAME]


def train_tokenizer(repos: list[Repo], vocab_size: int):
    """Byte-level BPE over the corpus, special tokens first (ids 0-5)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((text for repo in repos for _, text in repo.files), trainer)
    return tok


_WORD = re.compile(r"[a-z]{3,9}")


def name_words(repos: list[Repo], limit: int = 3000) -> list[str]:
    """Frequent lowercase identifier parts, to make plausible but made-up names (parse_window_total)."""
    counts: dict[str, int] = {}
    for repo in repos:
        for _, text in repo.files:
            for ident in re.findall(r"\b[a-z][a-z_]{4,30}\b", text[:20000]):
                for w in ident.split("_"):
                    if _WORD.fullmatch(w):
                        counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:limit]


def made_up_name(rng: random.Random, words: list[str]) -> str:
    return "_".join(rng.choice(words) for _ in range(rng.randint(2, 3)))


def definition_file(rng: random.Random, names: list[str], words: list[str]) -> str:
    """A small module defining the functions `names` (bodies are plausible filler)."""
    parts = []
    for name in names:
        args = ", ".join(rng.sample(words[:300], rng.randint(1, 3)))
        body = rng.choice(
            [
                f"    return {args.split(', ')[0]}\n",
                f"    result = []\n    for item in {args.split(', ')[0]}:\n"
                "        result.append(item)\n    return result\n",
                f"    if not {args.split(', ')[0]}:\n        return None\n    return len({args.split(', ')[-1]})\n",
            ]
        )
        parts.append(f"def {name}({args}):\n{body}\n")
    return "\n".join(parts)


class SampleMaker:
    def __init__(self, tok: Tokenizer, repos: list[Repo], words: list[str], seq_len: int, seed: int) -> None:
        self.tok, self.repos, self.words, self.seq_len = tok, repos, words, seq_len
        self.rng = random.Random(seed)
        self.special = {tok.token_id(t) for t in SPECIAL_TOKENS}
        self.n_regular = tok.vocab_size  # ids >= len(SPECIAL_TOKENS) are regular
        # Random spans draw ids below this bound: BPE ids are ordered by merge, so a low bound means frequent
        # tokens with well-trained embeddings (an easier start for induction); the full vocabulary by default.
        self.random_id_bound = self.n_regular
        self.sep, self.repo_tok = tok.token_id(FILE_SEP), tok.token_id(REPO_NAME)
        self.eot = tok.token_id(ENDOFTEXT)

    def sample(self, kind: str) -> list[int]:
        ids = getattr(self, f"_{kind}")()
        n = self.seq_len + 1
        while len(ids) < n:
            ids = ids + [self.eot] + self._repo(fim=False)
        return ids[:n]

    # -- kinds ----------------------------------------------------------------------------------

    def _file_text(self, repo: Repo, max_chars: int = 6000) -> tuple[str, str]:
        path, text = self.rng.choice(repo.files)
        if len(text) > max_chars:
            start = self.rng.randrange(0, len(text) - max_chars)
            start = text.find("\n", start) + 1
            text = text[start : start + max_chars]
        return path, text

    def _repo(self, fim: bool | None = None) -> list[int]:
        rng = self.rng
        repo = rng.choice(self.repos)
        ids = self.tok.encode(f"{REPO_NAME}{repo.name}\n")
        fim = rng.random() < 0.5 if fim is None else fim
        fim_at = rng.randrange(3) if fim else -1
        for i in range(8):
            path, text = self._file_text(repo)
            if i == fim_at:
                text = self._fim_text(text)
            ids += self.tok.encode(f"{FILE_SEP}{path}\n{text}")
            if len(ids) > self.seq_len:
                break
        return ids

    def _fim_text(self, text: str) -> str:
        """PSM or SPM fill-in-the-middle over a window of the text (character-level split)."""
        rng = self.rng
        text = text[:1500]
        a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        prefix, middle, suffix = text[:a], text[a:b], text[b:]
        if rng.random() < 0.5:
            return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{ENDOFTEXT}"
        return f"{FIM_SUFFIX}{suffix}{FIM_PREFIX}{prefix}{FIM_MIDDLE}{middle}{ENDOFTEXT}"

    def _defuse(self) -> list[int]:
        rng = self.rng
        names = [made_up_name(rng, self.words) for _ in range(rng.randint(1, 3))]
        repo = rng.choice(self.repos)
        head = f"{REPO_NAME}{repo.name}\n{FILE_SEP}{repo.name}/helpers.py\n{definition_file(rng, names, self.words)}"
        ids = self.tok.encode(head)
        _, filler = self._file_text(repo, max_chars=rng.randint(200, 1600))
        ids += self.tok.encode(f"{FILE_SEP}{repo.name}/main.py\nfrom .helpers import {', '.join(names)}\n\n{filler}")
        uses = ""
        while len(ids) + len(self.tok.encode(uses)) < self.seq_len + 1:
            name = rng.choice(names)
            uses += f"\n{rng.choice(self.words)} = {name}({rng.choice(self.words)})\n"
        return ids + self.tok.encode(uses)

    def _twice(self) -> list[int]:
        rng, ids = self.rng, []
        while len(ids) < self.seq_len + 1:
            span = [rng.randrange(len(SPECIAL_TOKENS), self.random_id_bound) for _ in range(rng.randint(8, 48))]
            ids += span + span
        return ids

    def _repeat(self) -> list[int]:
        rng = self.rng
        ids: list[int] = []
        while len(ids) < self.seq_len + 1:
            if rng.random() < 0.5:
                span = [rng.randrange(len(SPECIAL_TOKENS), self.random_id_bound) for _ in range(rng.randint(8, 64))]
            else:
                _, text = self._file_text(rng.choice(self.repos), max_chars=400)
                span = self.tok.encode(text)[: rng.randint(16, 96)]
            gap = [rng.randrange(len(SPECIAL_TOKENS), self.n_regular) for _ in range(rng.randint(0, 32))]
            ids += span + gap + span
        return ids
