"""The literal hints that gate the secret patterns: every match contains one, so gating loses nothing."""

import random
import string

import pytest

from indexer.secrets import find_secret
from ledger.secrets import SECRET_HINTS, SECRET_PATTERNS

rng = random.Random(0)
ALNUM = string.ascii_letters + string.digits


def _r(n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


SAMPLES = {
    "private_key": ["-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----",
                    "-----BEGIN OPENSSH PRIVATE KEY-----", "-----BEGIN PGP PRIVATE KEY BLOCK-----"],
    "aws_access_key": ["AKIA" + _r(16, string.ascii_uppercase + string.digits),
                       "ASIA" + _r(16, string.ascii_uppercase + string.digits)],
    "github_token": [p + _r(36) for p in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")]
                    + ["github_pat_" + _r(60, ALNUM + "_")],
    "gitlab_token": ["glpat-" + _r(20, ALNUM + "_-")],
    "slack_token": [f"xox{c}-" + _r(24, ALNUM + "-") for c in "abposr"],
    "openai_key": ["sk-" + _r(48, ALNUM + "_-"), "sk-proj-" + _r(40, ALNUM + "_-")],
    "anthropic_key": ["sk-ant-" + _r(40, ALNUM + "_-")],
    "google_api_key": ["AIza" + _r(35, ALNUM + "_-")],
    "huggingface_token": ["hf_" + _r(34)],
    "stripe_key": ["sk_live_" + _r(24), "rk_live_" + _r(24)],
}  # fmt: skip


def test_every_pattern_has_hints_and_samples():
    assert set(SECRET_HINTS) == set(SECRET_PATTERNS) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SECRET_PATTERNS))
def test_every_match_contains_a_hint_and_is_found(name):
    for sample in SAMPLES[name]:
        text = f"x = 1\nconfig = '{sample}'\n"
        m = SECRET_PATTERNS[name].search(text)
        assert m is not None, (name, sample)
        assert any(h in m.group() for h in SECRET_HINTS[name]), (name, sample)  # the hint is inside the match
        assert find_secret(text) is not None


def test_hints_alone_are_not_secrets():
    text = "".join(f"{h} " for hints in SECRET_HINTS.values() for h in hints) + "sk-short xoxb-1 hf_x AKIA12"
    assert find_secret(text) is None
    assert find_secret("def f():\n    return 'plain code'\n") is None
