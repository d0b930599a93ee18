"""Capsules end to end on the bundled model: restore + append is token-identical to a cold prefill."""

from pathlib import Path

import pytest
import torch

from blend.loader import load_model
from blend.sampling import Sampler, SamplingParams
from capsule import CapsuleError, CapsuleFormatError, fork, restore, resume_logits, serde, snapshot, text_hash
from capsule.cow import SharedPrefixCache

N_GEN = 64


@pytest.fixture(scope="module")
def lm():
    return load_model(None, device="cpu")


@pytest.fixture(scope="module")
def stream(lm):
    """~1.2k token ids of real Python source (this repository's model file)."""
    src = (Path(__file__).resolve().parent.parent / "blend" / "model.py").read_text()
    ids = lm.tokenizer.encode(src)
    assert len(ids) > 1200
    return ids


def _greedy(model, logits, cache, n=N_GEN):
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model.decode(out[-1], cache)
    return out


def _cold(lm, ids, n=N_GEN):
    cache = lm.model.new_cache(len(ids) + n)
    return _greedy(lm.model, lm.model.prefill(torch.tensor(ids), cache), cache, n)


def _capsule(lm, ids, **kw):
    cache = lm.model.new_cache(len(ids))
    logits = lm.model.prefill(torch.tensor(ids), cache)
    return snapshot(cache, ids, logits, lm.fingerprint, **kw)


@pytest.fixture(scope="module")
def case(lm, stream):
    """(context, delta, cold greedy continuation of context + delta, capsule of the context)."""
    ctx, delta = stream[:1000], stream[1000:1012]
    return ctx, delta, _cold(lm, ctx + delta), _capsule(lm, ctx, uri="file:///m.py", text_hash=text_hash("m"))


def _warm(lm, capsule, delta, fingerprint=None):
    state = restore(capsule, fingerprint or lm.fingerprint, capacity_extra=len(delta) + N_GEN)
    return _greedy(lm.model, resume_logits(lm.model, state, delta), state.cache)


def test_restore_plus_delta_equals_cold_prefill(lm, case):
    ctx, delta, cold, cap = case
    before = cap.kv.k.clone(), cap.kv.v.clone()
    assert _warm(lm, cap, delta) == cold
    assert torch.equal(cap.kv.k, before[0]) and torch.equal(cap.kv.v, before[1])  # the capsule is unchanged


def test_restore_with_no_delta_needs_no_prefill(lm, case):
    ctx, _, _, cap = case
    state = restore(cap, lm.fingerprint)
    assert torch.equal(resume_logits(lm.model, state, []), cap.last_logits)
    assert _greedy(lm.model, state.last_logits, state.cache, 16) == _cold(lm, ctx, 16)


def test_forks_are_independent_and_exact(lm, case):
    ctx, delta, cold, cap = case
    other = [5, 6, 7, 8]
    a, b, c = fork(cap, lm.fingerprint, 3)
    # b appends first and takes the spare tail; a and c get private copies on their first append.
    out_b = _greedy(lm.model, resume_logits(lm.model, b, other), b.cache, 8)
    out_a = _greedy(lm.model, resume_logits(lm.model, a, delta), a.cache)
    out_c = _greedy(lm.model, resume_logits(lm.model, c, delta), c.cache)
    assert out_a == cold and out_c == cold
    assert b.cache.is_shared and not a.cache.is_shared and not c.cache.is_shared
    assert out_b == _cold(lm, ctx + other, 8)


def test_exact_after_spill_and_reload(lm, case, tmp_path):
    _, delta, cold, cap = case
    path = tmp_path / "c.capsule"
    serde.write(cap, path)
    loaded = serde.read(path)
    assert loaded.id == cap.id and loaded.tokens == cap.tokens and loaded.uri == cap.uri
    assert torch.equal(loaded.kv.k, cap.kv.k) and torch.equal(loaded.kv.v, cap.kv.v)  # fp32 on disk: bit-exact
    assert torch.equal(loaded.kv.positions, cap.kv.positions) and torch.equal(loaded.last_logits, cap.last_logits)
    assert _warm(lm, loaded, delta) == cold


def test_exact_after_unrelated_sessions(lm, case, stream):
    _, delta, cold, cap = case
    other = _capsule(lm, stream[200:700])
    for _ in range(2):  # other sessions restore, append, truncate and grow in between
        s = restore(other, lm.fingerprint)
        _greedy(lm.model, resume_logits(lm.model, s, stream[700:720]), s.cache, 8)
        t = restore(cap, lm.fingerprint)
        resume_logits(lm.model, t, stream[5:9])
        t.cache.truncate(300)
        resume_logits(lm.model, t, stream[1100:1200])
        lm.model.prefill(torch.tensor(stream[:400]), lm.model.new_cache(8))
    assert _warm(lm, cap, delta) == cold


def test_longest_prefix_restore_of_a_shorter_prefix(lm, case, stream):
    ctx, _, _, cap = case
    edit = ctx[:800] + stream[1100:1110]  # the document diverges after 800 tokens
    state = restore(cap, lm.fingerprint, n_tokens=800)
    assert state.last_logits is None and len(state.cache) == 800 and not state.cache.is_shared
    assert _greedy(lm.model, resume_logits(lm.model, state, edit[800:]), state.cache, 32) == _cold(lm, edit, 32)
    assert cap.n == 1000 and torch.equal(cap.kv.positions, torch.arange(1000))


def test_sampled_continuation_reproduces(lm, stream, tmp_path):
    model, params = lm.model, SamplingParams(temperature=0.8, top_p=0.95, seed=7)
    sampler = Sampler(params)
    ids = stream[:600]
    cache = model.new_cache(700)
    logits = model.prefill(torch.tensor(ids), cache)
    for _ in range(5):  # the session already sampled a few tokens: the RNG is mid-stream
        ids.append(sampler(logits))
        logits = model.decode(ids[-1], cache)
    cap = snapshot(cache, ids, logits, lm.fingerprint, sampler=sampler)

    def go(sampler, logits, cache):
        out = []
        for _ in range(40):
            out.append(sampler(logits))
            logits = model.decode(out[-1], cache)
        return out

    original = go(sampler, logits, cache)
    state = restore(cap, lm.fingerprint)
    assert go(state.sampler(), state.last_logits, state.cache) == original
    serde.write(cap, tmp_path / "s.capsule")
    state = restore(serde.read(tmp_path / "s.capsule"), lm.fingerprint)
    assert state.sampling == {"temperature": 0.8, "top_p": 0.95, "seed": 7}
    assert go(state.sampler(), state.last_logits, state.cache) == original
    assert go(Sampler(params), cap.last_logits, restore(cap, lm.fingerprint).cache) != original  # RNG state matters


def test_fingerprint_mismatch_is_refused(lm, case):
    cap = case[3]
    with pytest.raises(CapsuleError) as e:
        restore(cap, "0" * 32)
    assert lm.fingerprint in str(e.value) and "0" * 32 in str(e.value) and "refused" in str(e.value)


@pytest.mark.parametrize("damage", ["flip_kv", "flip_header", "truncate", "magic", "empty"])
def test_corrupt_file_is_refused(case, tmp_path, damage):
    path = tmp_path / "c.capsule"
    size = serde.write(case[3], path)
    data = bytearray(path.read_bytes())
    assert len(data) == size
    if damage == "flip_kv":
        data[len(data) // 2] ^= 0x10
    elif damage == "flip_header":
        data[40] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "magic":
        data[:4] = b"XXXX"
    else:
        data = data[:10]
    path.write_bytes(bytes(data))
    with pytest.raises(CapsuleFormatError, match="checksum|truncated|not a capsule|unreadable|payload"):
        serde.read(path)


def test_reserved_word_is_not_read(lm, case, tmp_path):
    """Files written before this version held an xor in bytes 16-24: they still load (the sum covers the
    same bytes), and the sum alone still refuses a flipped bit anywhere after them."""
    path = tmp_path / "old.capsule"
    serde.write(case[3], path)
    data = bytearray(path.read_bytes())
    assert data[16:24] == bytes(8)
    data[16:24] = (0x0123456789ABCDEF).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    back = serde.read(path)
    n = back.n
    assert back.tokens == case[3].tokens and torch.equal(back.kv.k_all[:, :, :n], case[3].kv.k_all[:, :, :n])
    for off in (24, 100, len(data) // 3, len(data) - 9):
        bad = bytearray(data)
        bad[off] ^= 0x04
        path.write_bytes(bytes(bad))
        with pytest.raises(CapsuleFormatError):
            serde.read(path)


def test_restore_from_memory_copies_nothing(lm, case):
    """Restore is O(1): the session reads the capsule's KV in place (its time is `bench capsule`'s figure)."""
    cap = case[3]
    state = restore(cap, lm.fingerprint, capacity_extra=16)
    assert state.cache.is_shared and state.cache.shares(cap.kv)
    assert state.cache.k.data_ptr() == cap.kv.k.data_ptr() and state.cache.v.data_ptr() == cap.kv.v.data_ptr()
    assert len(state.cache) == cap.n and state.tokens == cap.tokens


def test_copy_on_write_guards_the_capsule(lm, case):
    cap = case[3]
    k0 = cap.kv.k.clone()
    a = restore(cap, lm.fingerprint)
    assert isinstance(a.cache, SharedPrefixCache) and a.cache.is_shared
    a.cache.truncate(10)  # appends would land on capsule slots: a private copy first
    assert not a.cache.is_shared and len(a.cache) == 10
    lm.model.prefill(torch.tensor([1, 2, 3]), a.cache)
    b = restore(cap, lm.fingerprint)
    lm.model.prefill(torch.arange(10, 10 + 300), b.cache)  # beyond the 256-slot spare tail: grows, copies
    assert not b.cache.is_shared and len(b.cache) == 1300
    with pytest.raises(CapsuleError):
        restore(cap, lm.fingerprint, n_tokens=cap.n + 1)
    assert torch.equal(cap.kv.k, k0) and cap.n == 1000


def test_snapshot_rejects_a_token_count_mismatch(lm):
    cache = lm.model.new_cache(8)
    logits = lm.model.prefill(torch.tensor([1, 2, 3]), cache)
    with pytest.raises(CapsuleError, match="3 tokens given 2"):
        snapshot(cache, [1, 2], logits, lm.fingerprint)


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_restore_is_bit_exact_with_the_uninterrupted_session(hf_checkpoints, tmp_path, name):
    """Tiny random models (GQA, sliding window): the restored session gives the very same logits."""
    lm = load_model(hf_checkpoints[name], device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (150,), generator=g).tolist()
    cache = lm.model.new_cache(200)
    logits = lm.model.prefill(torch.tensor(ids[:120]), cache)
    cap = snapshot(cache, ids[:120], logits, lm.fingerprint)
    serde.write(cap, tmp_path / "t.capsule")
    ref = lm.model.prefill(torch.tensor(ids[120:]), cache, all_logits=True)
    for c in (cap, serde.read(tmp_path / "t.capsule")):
        state = restore(c, lm.fingerprint)
        assert torch.equal(lm.model.prefill(torch.tensor(ids[120:]), state.cache, all_logits=True), ref)
