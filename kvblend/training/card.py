"""Measure a checkpoint (held-out loss, induction, cross-file copy) and write its MODEL_CARD.md.

python -m kvblend.training.card --model models/kvblend-tiny-py            # print the metrics as JSON
python -m kvblend.training.card --model models/kvblend-tiny-py --write    # and rewrite MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from blend.loader import load_model
from kvblend.training import probes
from kvblend.training.corpus import HELD_OUT_PERCENT, load_repos, split_repos
from kvblend.training.samples import name_words


def measure(model_dir: Path, seq_len: int = 512, copy_cases: int = 40) -> dict:
    lm = load_model(model_dir, device="cpu")
    train_repos, held = split_repos(load_repos())
    words = name_words(train_repos)
    return {
        "held_out_loss": round(probes.held_out_loss(lm.model, lm.tokenizer, held, seq_len, max_windows=48), 3),
        "held_out_repos": [r.name for r in held],
        "induction": probes.induction_ratio(lm.model, lm.config.vocab_size, n=32),
        "cross_file_copy": probes.cross_file_copy(lm.model, lm.tokenizer, held, words, n=copy_cases),
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "bytes_on_disk": os.path.getsize(model_dir / "model.safetensors"),
    }


def write_card(model_dir: Path, metrics: dict, notes: str = "") -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    hist_path = model_dir / "train_history.json"
    history = json.loads(hist_path.read_text()) if hist_path.exists() else []
    last = history[-1] if history else {}
    ind, copy = metrics["induction"], metrics["cross_file_copy"]
    curve = "\n".join(
        f"| {h['step']} | {h['phase']} | {h['train_loss']} | {h['held_out_loss']} | {h['induction']['ratio']} |"
        for h in history[:: max(1, len(history) // 12)] + history[-1:]
    )
    text = f"""# kvblend-tiny-py

The default model of kvblend: a small Llama-architecture code model trained by this project on CPU, so that
the README's commands run on a fresh machine without downloading weights, and so that blending is tested on
a model that really copies from context in other files.

## Architecture
LlamaForCausalLM: {cfg["num_hidden_layers"]} layers, hidden {cfg["hidden_size"]}, {cfg["num_attention_heads"]} query
heads / {cfg["num_key_value_heads"]} KV heads (GQA) of {cfg["head_dim"]}, SwiGLU MLP {cfg["intermediate_size"]},
RoPE theta
{cfg["rope_theta"]}, tied embeddings, vocabulary {cfg["vocab_size"]} (byte-level BPE trained with `tokenizers`, special
tokens `<|endoftext|> <|fim_prefix|> <|fim_suffix|> <|fim_middle|> <|file_sep|> <|repo_name|>`).
{metrics["parameters"]:,} parameters, {metrics["bytes_on_disk"] / 1e6:.1f} MB on disk (fp16 safetensors).

## Data and licence
The CPython {".".join(map(str, __import__("sys").version_info[:2]))} standard library source on the training
machine (Python Software Foundation License), {HELD_OUT_PERCENT}% of its packages held out by a hash of their name
({", ".join(metrics["held_out_repos"])}): never trained on, used for the loss and probes below. The evaluation
data in `shared/data` was never used. The weights are released under the project's licence (Apache-2.0).

## Training
`python -m kvblend.training.train` (seeded, resumable from `runs/train/ckpt.pt`, or from this directory with
`--init-from`; CUDA when present). Objective: next-token prediction on repository-level samples (files of one
package joined with `<|repo_name|>` / `<|file_sep|>`, FIM in PSM or SPM order on half of them), mixed with a
copy curriculum: made-up functions defined in one file and used in another after hundreds of tokens of real
code, and spans (random ids or real code) that recur later in the sequence. The first phase is mostly copy
samples, in smaller batches (more optimizer steps), which is where induction heads form.

Steps: {last.get("step", "?")}, tokens seen: {last.get("tokens_seen", 0):,}.

| step | phase | train loss | held-out loss | induction ratio |
|---|---|---|---|---|
{curve}

## Measurements
Re-measure with `python -m kvblend.training.card --model models/kvblend-tiny-py`.

- Held-out loss: **{metrics["held_out_loss"]} nats/token** (48 windows of 512 tokens).
- Induction (random token ids repeated twice): first copy {ind["first_copy_loss"]}, second copy
  {ind["second_copy_loss"]}, ratio **{ind["ratio"]}** (1 = no copying; target <= 0.5).
- Cross-file copy probe ({copy["n"]} cases: a made-up function defined in file A, used in file B after 300-400
  tokens of held-out code; the prompt ends in the name's first token): greedy accuracy **{copy["accuracy_with_def"]}**
  with file A in context vs **{copy["accuracy_without_def"]}** without it; mean log-probability gap of the name
  {copy["logprob_gap_nats"]} nats.
{notes}"""
    (model_dir / "MODEL_CARD.md").write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/kvblend-tiny-py"))
    p.add_argument("--write", action="store_true", help="rewrite MODEL_CARD.md in the model directory")
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the card")
    args = p.parse_args()
    torch.set_num_threads(2)
    metrics = measure(args.model)
    print(json.dumps(metrics, indent=1))
    if args.write:
        (args.model / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        write_card(args.model, metrics, args.notes.read_text() if args.notes else "")


if __name__ == "__main__":
    main()
