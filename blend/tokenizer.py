"""A thin wrapper over a `tokenizers` tokenizer.json with the special tokens kvblend's prompts use."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from blend.weights import CheckpointError

# Special tokens in the Qwen2.5-Coder convention (the bundled model uses the same names).
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FILE_SEP, REPO_NAME, ENDOFTEXT = "<|file_sep|>", "<|repo_name|>", "<|endoftext|>"

# The Qwen2 split (Qwen2.5-Coder's tokenizer.json), one of the two splits `Tokenizer.cuts_at_lines` knows.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


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
        if self._spec.get("normalizer") is not None or not any(q.get("type") == "ByteLevel" for q in self._pre_parts):
            return None
        # The model's tokens are spelt in the byte-level alphabet, one character per byte; added tokens as text.
        added = [len(t.content.encode("utf-8")) for t in self._tok.get_added_tokens_decoder().values()]
        return max([len(t) for t in self._tok.get_vocab(with_added_tokens=False)] + added, default=None)

    @functools.cached_property
    def _spec(self) -> dict:
        return json.loads(self._tok.to_str())

    @functools.cached_property
    def _pre_parts(self) -> list[dict]:
        """The pre-tokenizer's steps (one, or those of a Sequence)."""
        pre = self._spec.get("pre_tokenizer") or {}
        return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    @functools.cached_property
    def token_bytes(self) -> np.ndarray | None:
        """Text bytes of each token id (byte-level BPE: one character of a token per byte; added tokens as their
        UTF-8), where `cuts_at_lines` holds, else None."""
        if not self.cuts_at_lines:
            return None
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for t, i in self._tok.get_vocab(with_added_tokens=False).items():
            out[i] = len(t)
        for i, t in self._tok.get_added_tokens_decoder().items():
            out[i] = len(t.content.encode("utf-8"))
        return out

    @functools.cached_property
    def cuts_at_lines(self) -> bool:
        """Whether ids split at lines: where a "\\n" is followed by a printable ASCII character, or a space after
        whitespace is, a token starts at that character (or space) whatever comes after it, and the split before
        it looks no further than that character. Then a chunk's ids can be cut out of its file's (the two kinds
        of cut: `indexer.chunker._FileIds`).

        Holds for byte-level BPE split by the GPT-2 rule (ByteLevel's own regex) or by the Qwen2 rule, every
        piece of which that can hold a "\\n" ends at whitespace and whose only look-ahead (`\\s+(?!\\S)`) reads
        one character: no prefix space, no dropout, no subword affixes, no normalizer but Unicode normalization
        (the identity on ASCII; non-ASCII text is then not cut: `can_cut`)."""
        spec = self._spec
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix"):
            return False
        if model.get("end_of_word_suffix") or not _unicode_forms_only(spec.get("normalizer")):
            return False
        parts = self._pre_parts
        level = [q for q in parts if q.get("type") == "ByteLevel"]
        if len(level) != 1 or level[0].get("add_prefix_space"):
            return False
        if parts == level:
            return bool(level[0].get("use_regex", True))
        split = [q for q in parts if q is not level[0]]
        return (
            len(parts) == 2
            and parts[1] is level[0]
            and not level[0].get("use_regex", True)
            and split[0].get("type") == "Split"
            and (split[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and split[0].get("behavior") == "Isolated"
            and not split[0].get("invert")
        )

    def can_cut(self, text: str) -> bool:
        """Whether ids of `text` split at lines (`cuts_at_lines`): it is ASCII where a normalizer could change its
        characters, and where it holds an added token's text (split off before anything else, so the text before
        one reads as a text's end), no added token strips the spaces beside it or holds whitespace (a cut must
        not start with one either: `added_texts`)."""
        if not self.cuts_at_lines or (self._spec.get("normalizer") is not None and not text.isascii()):
            return False
        return self._plain_added or not any(t in text for t in self.added_texts)

    @functools.cached_property
    def added_texts(self) -> tuple[str, ...]:
        return tuple(t.content for t in self._tok.get_added_tokens_decoder().values())

    @functools.cached_property
    def _plain_added(self) -> bool:
        return all(
            not (t.lstrip or t.rstrip or t.single_word) and t.content and not any(c.isspace() for c in t.content)
            for t in self._tok.get_added_tokens_decoder().values()
        )

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)


def _unicode_forms_only(norm: dict | None) -> bool:
    """No normalizer, or only Unicode normalization forms (which leave ASCII text as it is)."""
    if norm is None:
        return True
    if norm.get("type") == "Sequence":
        return all(_unicode_forms_only(n) for n in norm.get("normalizers", []))
    return norm.get("type") in ("NFC", "NFD", "NFKC", "NFKD")


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
