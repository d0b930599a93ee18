import pytest
import torch

from blend.sampling import Sampler, SamplingParams, top_p_filter


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert Sampler()(logits) == 1


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert top_p_filter(probs, 0.7).tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])
    assert top_p_filter(probs, 0.5).tolist() == pytest.approx([1.0, 0, 0, 0])
    assert top_p_filter(probs, 0.1).tolist() == pytest.approx([1.0, 0, 0, 0])  # at least one token
    assert top_p_filter(probs, 1.0).tolist() == pytest.approx(probs.tolist())


def test_seeded_sampling_reproduces_and_follows_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    draws = [Sampler(SamplingParams(temperature=1.0, seed=7)) for _ in range(2)]
    seq_a = [draws[0](logits) for _ in range(3000)]
    seq_b = [draws[1](logits) for _ in range(3000)]
    assert seq_a == seq_b
    freq = torch.bincount(torch.tensor(seq_a), minlength=3).float() / 3000
    assert freq.tolist() == pytest.approx([0.6, 0.3, 0.1], abs=0.03)
    other = Sampler(SamplingParams(temperature=1.0, seed=8))
    assert [other(logits) for _ in range(3000)] != seq_a


def test_top_p_never_samples_outside_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=1))
    assert set(s(logits) for _ in range(500)) == {0, 1}


def test_low_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    s = Sampler(SamplingParams(temperature=0.05, seed=3))
    assert all(s(logits) == 0 for _ in range(200))


def test_state_roundtrip_resumes_the_stream():
    logits = torch.zeros(50)
    s = Sampler(SamplingParams(temperature=1.0, seed=5))
    s(logits)
    state = s.get_state()
    ahead = [s(logits) for _ in range(10)]
    s.set_state(state)
    assert [s(logits) for _ in range(10)] == ahead


@pytest.mark.parametrize(
    "kw",
    [{"temperature": -1}, {"temperature": float("nan")}, {"temperature": float("inf")}, {"top_p": 0},
     {"top_p": 1.5}, {"top_p": float("nan")}, {"seed": -1}, {"seed": 1 << 64}],
)  # fmt: skip
def test_bad_params_raise(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)
