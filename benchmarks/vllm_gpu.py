"""TTFT in vLLM on a GPU: vLLM's own full prefill vs kvblend's blended KV through the connector, one table.

The model is Qwen2.5-Coder-1.5B-shaped (28 layers, hidden 1536, 12 query / 2 KV heads, head_dim 128, vocab
151936, qkv bias, tied embeddings, rope theta 1e6, 32k positions) with random bf16 weights, built here (no
download): config.json from transformers' Qwen2Config, weights drawn and saved as safetensors, and the bundled
model's tokenizer (kvblend's loader wants one; prompts are random token ids). Rows at 4k / 16k / 32k tokens of
512-token chunks + a 256-token local prompt; blend recompute ratio 0.15. Agreement with random weights says
little about quality (the CPU test and `kvblend bench blend` on the trained model do); the timing is the point.

One command, in an environment with a CUDA build of vLLM and kvblend (`pip install --no-deps -e .` plus
safetensors tokenizers msgpack):

    python benchmarks/vllm_gpu.py [--contexts 4096,16384,32768] [--dir /tmp/kvblend-qwen1.5b-random]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Qwen2.5-Coder-1.5B's shape (its config.json), minus the weights.
QWEN_1_5B = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, use_sliding_window=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151643,
)  # fmt: skip


def build_checkpoint(path: Path, device: str, seed: int = 0, shape: dict | None = None) -> Path:
    """A random-weight Qwen2-family HF checkpoint of `shape` (default Qwen2.5-Coder-1.5B's) in `path` (reused when
    already there)."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config

    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    cfg = Qwen2Config(**(shape or QWEN_1_5B), torch_dtype="bfloat16")
    cfg.architectures = ["Qwen2ForCausalLM"]
    cfg.to_json_file(str(path / "config.json"))
    g = torch.Generator(device=device).manual_seed(seed)
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)

    def w(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=device) * std).to(torch.bfloat16).cpu()

    tensors = {"model.embed_tokens.weight": w(cfg.vocab_size, h), "model.norm.weight": torch.ones(h).bfloat16()}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.q_proj.bias": w(h),
            p + "self_attn.k_proj.weight": w(kv, h), p + "self_attn.k_proj.bias": w(kv),
            p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.v_proj.bias": w(kv),
            p + "self_attn.o_proj.weight": w(h, h),
            p + "mlp.gate_proj.weight": w(cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": w(cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": w(h, cfg.intermediate_size),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        }  # fmt: skip
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    bundled = ROOT / "models" / "kvblend-tiny-py"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled / name, path / name)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="4096,16384,32768")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kvblend-qwen1.5b-random"))
    ap.add_argument("--ratio", type=float, default=0.15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("vllm_gpu.py needs a CUDA GPU (and a CUDA build of vLLM)", file=sys.stderr)
        return 2
    from blend.loader import load_model
    from kvblend.bench_vllm import VllmBenchConfig, bench_vllm, format_table
    from kvblend.engine import make_engine

    contexts = tuple(int(c) for c in args.contexts.split(","))
    path = build_checkpoint(args.dir, "cuda")
    lm = load_model(path, device="cuda", dtype=torch.bfloat16)
    cfg = VllmBenchConfig(contexts, 512, 256, args.ratio, args.repeats, tokens="random", with_torch=False)
    with make_engine("vllm", lm, dtype="bfloat16", max_model_len=max(contexts),
                     gpu_memory_utilization=args.gpu_memory_utilization) as engine:  # fmt: skip
        result = bench_vllm(engine, lm, cfg)
    result["device"] = torch.cuda.get_device_name()
    print(f"{result['device']}, Qwen2.5-Coder-1.5B-shaped random bf16 weights, ratio {args.ratio}, TTFT best of "
          f"{args.repeats} (ms)")  # fmt: skip
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
