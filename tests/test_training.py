"""The default model's training pipeline on a micro preset and a small corpus (seconds, not hours)."""

import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from blend.loader import load_model
from blend.tokenizer import Tokenizer
from kvblend.training import probes
from kvblend.training.corpus import load_repos, split_repos
from kvblend.training.samples import SPECIAL_TOKENS, SampleMaker, name_words, train_tokenizer
from kvblend.training.train import TrainArgs, train
from tests.tiny_models import hf_model

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for pkg, names in {"json": ["decoder.py", "encoder.py", "__init__.py"], "email": ["utils.py", "header.py"]}.items():
        (root / pkg).mkdir()
        for n in names:
            shutil.copy(STDLIB / pkg / n, root / pkg / n)
    for n in ["textwrap.py", "shlex.py", "glob.py", "fnmatch.py", "bisect.py"]:
        shutil.copy(STDLIB / n, root / n)
    (root / "latin1.py").write_bytes(b"x = '\xe9'\n")  # not UTF-8: skipped, not fatal
    return root


def _args(tmp, corpus, steps, **kw):
    base = dict(out=tmp / "out", work=tmp / "work", steps=steps, copy_steps=1, induct_steps=1, induct_seq_len=32,
                seq_len=64, batch=2, copy_batch=2, lr=1e-3, warmup=2, seed=0, eval_every=2, init_from=None,
                device="cpu", max_minutes=60, preset="micro", corpus_root=corpus)  # fmt: skip
    base.update(kw)
    return TrainArgs(**base)


def test_corpus_groups_and_holds_out_deterministically(corpus):
    repos = load_repos(corpus)
    names = [r.name for r in repos]
    assert "json" in names and "email" in names
    assert all(p != "latin1.py" for r in repos for p, _ in r.files)
    assert split_repos(load_repos(corpus)) == split_repos(repos)


def test_samples_have_the_right_shape_and_formats(corpus, tmp_path):
    repos = load_repos(corpus)
    tok_json = train_tokenizer(repos, 384).to_str()
    (tmp_path / "tokenizer.json").write_text(tok_json)
    tok = Tokenizer.from_dir(tmp_path)
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(6))
    maker = SampleMaker(tok, repos, name_words(repos), seq_len=128, seed=0)
    fim_seen = set()
    for _ in range(30):
        ids = maker.sample("repo")
        assert len(ids) == 129
        fim_seen |= {t for t in ids if t in (1, 2)}
    assert fim_seen == {1, 2}  # both FIM prefix and suffix markers occur
    ids = maker.sample("defuse")
    text = tok.decode(ids, skip_special=False)
    assert "<|file_sep|>" in text and "def " in text
    rep = maker.sample("repeat")
    assert len(rep) == 129


def test_train_exports_a_checkpoint_transformers_agrees_with(corpus, tmp_path):
    result = train(_args(tmp_path, corpus, steps=4))
    assert result["step"] == 4 and len(result["history"]) == 2
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_history.json"):
        assert (tmp_path / "out" / name).is_file()
    assert all(t.dtype == torch.float16 for t in load_file(str(tmp_path / "out" / "model.safetensors")).values())
    lm = load_model(tmp_path / "out", device="cpu")
    hf = hf_model(tmp_path / "out")
    toks = torch.randint(6, 384, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    ours = lm.model.prefill(toks, lm.model.new_cache(), all_logits=True)
    assert (ours - ref).abs().max().item() < 1e-4
    ind = probes.induction_ratio(lm.model, 384, n=4, span=16)
    assert ind["first_copy_loss"] > 0


def test_resumed_training_equals_uninterrupted(corpus, tmp_path):
    train(_args(tmp_path / "a", corpus, steps=4))
    train(_args(tmp_path / "b", corpus, steps=2))
    train(_args(tmp_path / "b", corpus, steps=4))  # resumes from b/work/ckpt.pt
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_worker_processes_make_the_same_batches_and_weights(corpus, tmp_path):
    """Batches depend on (seed, step) alone: made ahead by worker processes they are the ones this process
    would make, in order, so a run with workers trains the same weights."""
    from kvblend.training.train import Batches, batch_rows

    a = _args(tmp_path / "w", corpus, steps=6, workers=2)
    repos = load_repos(corpus)
    tok_json = train_tokenizer(repos, 384).to_str()
    (tmp_path / "tokenizer.json").write_text(tok_json)
    maker = SampleMaker(Tokenizer.from_dir(tmp_path), repos, name_words(repos), a.seq_len, a.seed)
    batches = Batches(maker, a, tok_json, start=1)
    try:
        got = [batches.get(s) for s in range(1, 6)]
    finally:
        batches.close()
    for s, rows in zip(range(1, 6), got, strict=True):
        assert (rows == batch_rows(maker, a, s)).all(), s
    assert batch_rows(maker, a, 0).shape == (2, 33)  # step 0: the induct phase's short sequences
    assert all(rows.shape == (2, 65) for rows in got)

    train(_args(tmp_path / "a", corpus, steps=4))
    train(_args(tmp_path / "b", corpus, steps=4, workers=2))
    wa = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grown_model_computes_what_the_small_one_did():
    import dataclasses

    from blend.model import Transformer
    from kvblend.training.train import PRESETS, grow, init_weights

    torch.manual_seed(0)
    small_cfg = PRESETS["micro"]
    small = Transformer(small_cfg)
    init_weights(small)
    big = grow(small, dataclasses.replace(small_cfg, n_layers=5, sliding_windows=()))
    assert big.cfg.n_layers == 5
    toks = torch.randint(0, small_cfg.vocab_size, (2, 24))
    with torch.no_grad():
        assert torch.equal(big(toks), small(toks))
    with pytest.raises(ValueError, match="cannot grow"):
        grow(small, dataclasses.replace(small_cfg, dim=64, head_dim=32))
