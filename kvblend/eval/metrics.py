"""Quality and latency metrics of `kvblend eval` (definitions also in README "Evaluation").

Every text metric compares *normalized* strings: each line right-stripped, then the whole stripped, so
trailing spaces, a final newline and the indentation before the first line do not count, everything else
(inner indentation, spacing within a line) does.
"""

from __future__ import annotations

import keyword
import math
import re

from kvblend.stats import percentile  # noqa: F401  (linear interpolation; the p50/p95 of results.json)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = frozenset(keyword.kwlist)


def normalize(text: str) -> str:
    """Each line right-stripped, then the whole stripped."""
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return float(normalize(pred) == normalize(ref))


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute: cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, ref: str) -> float:
    """1 - levenshtein / max(len) of the normalized texts; 1.0 when both are empty."""
    a, b = normalize(pred), normalize(ref)
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def identifiers(text: str) -> set[str]:
    """Identifiers (`[A-Za-z_][A-Za-z0-9_]*`) in `text`, Python keywords excluded."""
    return {m for m in _IDENT.findall(text) if m not in _KEYWORDS}


def identifier_match(pred: str, ref: str) -> float:
    """F1 of the identifier sets of prediction and reference; 1.0 when both have none, 0.0 when one has none."""
    p, r = identifiers(pred), identifiers(ref)
    if not p and not r:
        return 1.0
    common = len(p & r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
