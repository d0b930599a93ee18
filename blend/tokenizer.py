"""A thin wrapper over a `tokenizers` tokenizer.json with the special tokens kvblend's prompts use."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from blend.weights import CheckpointError

# Special tokens in the Qwen2.5-Coder convention (the bundled model uses the same names).
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FILE_SEP, REPO_NAME, ENDOFTEXT = "<|file_sep|>", "<|repo_name|>", "<|endoftext|>"


class Tokenizer:
    def __init__(self, tok: HFTokenizer, eos_ids: tuple[int, ...] = ()) -> None:
        self._tok = tok
        self.eos_ids = eos_ids or tuple(i for i in [self.token_id(ENDOFTEXT)] if i is not None)

    @classmethod
    def from_dir(cls, model_dir: Path, eos_ids: tuple[int, ...] = ()) -> Tokenizer:
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"missing tokenizer.json in {model_dir}")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"cannot read {path}: {e}") from None
        if not eos_ids:
            eos_ids = _eos_from_tokenizer_config(model_dir, tok)
        return cls(tok, eos_ids)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Raw text to ids, special-token strings in the text mapped to their ids, no BOS/EOS added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call (the Rust side spreads the texts over its threads)."""
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets (tokenizers >= 0.21)
        return [e.ids for e in batch(texts, add_special_tokens=False)]

    @functools.cached_property
    def max_token_bytes(self) -> int | None:
        """An upper bound on the text bytes one token stands for, where every byte of a text is in some token
        (byte-level BPE with no normalizer: the code models'), else None. A text of more characters than
        n x this cannot tokenize into n tokens or fewer, so a chunker need not tokenize it to know."""
        spec = json.loads(self._tok.to_str())
        pre = spec.get("pre_tokenizer") or {}
        parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        if spec.get("normalizer") is not None or not any(q.get("type") == "ByteLevel" for q in parts):
            return None
        # The model's tokens are spelt in the byte-level alphabet, one character per byte; added tokens as text.
        added = [len(t.content.encode("utf-8")) for t in self._tok.get_added_tokens_decoder().values()]
        return max([len(t) for t in self._tok.get_vocab(with_added_tokens=False)] + added, default=None)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)


def _eos_from_tokenizer_config(model_dir: Path, tok: HFTokenizer) -> tuple[int, ...]:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ()
    if isinstance(eos, dict):
        eos = eos.get("content")
    eid = tok.token_to_id(eos) if isinstance(eos, str) else None
    return (eid,) if eid is not None else ()
