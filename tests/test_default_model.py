"""The bundled default model: loadable by us and by transformers, used when --model is not given."""

import json
import subprocess
import sys

import torch

from blend.generate import generate
from blend.loader import DEFAULT_MODEL_DIR, load_model
from kvblend.training.samples import SPECIAL_TOKENS
from tests.tiny_models import hf_model


def test_files_size_and_tokenizer():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 30 * 1024 * 1024
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    lm = load_model(device="cpu")
    assert [lm.tokenizer.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert lm.tokenizer.eos_ids == (0,)


def test_transformers_logits_match_ours():
    lm = load_model(device="cpu")
    hf = hf_model(DEFAULT_MODEL_DIR)
    ids = lm.tokenizer.encode("import os\n\n\ndef read_config(path):\n    with open(path) as f:\n        return f.")
    toks = torch.tensor(ids)
    with torch.no_grad():
        ref = hf(toks[None]).logits[0]
    ours = lm.model.prefill(toks, lm.model.new_cache(), all_logits=True)
    assert (ours - ref).abs().max().item() < 1e-4


def test_generate_without_model_uses_the_default(tmp_path):
    prompt = "def fibonacci(n):\n    "
    (tmp_path / "p.py").write_text(prompt)
    r = subprocess.run(
        [sys.executable, "-m", "kvblend", "generate", "--prompt-file", str(tmp_path / "p.py"), "--max-tokens", "32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lm = load_model(device="cpu")
    expected = generate(lm.model, lm.tokenizer.encode(prompt), 32, eos_ids=lm.tokenizer.eos_ids).tokens
    assert r.stdout == lm.tokenizer.decode(expected) and r.stdout.strip()
