"""Time the Triton kernels on CUDA at a realistic blend shape and compare with a device-to-device copy.

Default shape: Qwen2.5-Coder-1.5B-like (28 layers, 12 query heads, 2 KV heads, head_dim 128), a 4096-token
blended context with 15% of tokens selected for recompute. Each kernel is first checked against its
reference, then timed with `triton.testing.do_bench`; GB/s counts the bytes the kernel must read and
write once, and "copy GB/s" is `torch.empty_like(x).copy_(x)` moving the same number of bytes.
selective_attention is compute-bound, so its row also gives TFLOP/s over the visible (query, key) pairs.

    python benchmarks/gpu_kernels.py [--context 4096] [--select 0.15] [--dtype bf16]

Needs CUDA and triton; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    kernel: str
    shape: str
    ms: float
    gbytes: float  # bytes read + written once, in GB
    copy_ms: float
    note: str = ""

    def cells(self) -> list[str]:
        gbps = self.gbytes / (self.ms * 1e-3)
        copy_gbps = self.gbytes / (self.copy_ms * 1e-3)
        return [
            self.kernel,
            self.shape,
            f"{self.ms:.4f}",
            f"{gbps:.0f}",
            f"{copy_gbps:.0f}",
            f"{gbps / copy_gbps:.2f}",
            self.note,
        ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--q-heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--context", type=int, default=4096, help="blended context tokens")
    p.add_argument("--select", type=float, default=0.15, help="fraction of tokens recomputed")
    p.add_argument("--window", type=int, default=None, help="sliding window for selective_attention")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check against the references")
    return p.parse_args(argv)


def copy_ms(do_bench, n_bytes: int) -> float:
    """Time a device-to-device copy that reads and writes `n_bytes` in total (n_bytes / 2 each way)."""
    x = torch.empty(max(n_bytes // 2, 1), dtype=torch.uint8, device="cuda")
    return do_bench(lambda: torch.empty_like(x).copy_(x))


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu_kernels.py needs a CUDA device; none is available here.", file=sys.stderr)
        return 1
    try:
        from triton.testing import do_bench
    except ImportError:
        print("benchmarks/gpu_kernels.py needs triton (pip install triton).", file=sys.stderr)
        return 1
    # The package exports functions named like their modules, so reach the modules through importlib.
    rr = importlib.import_module("triton_kernels.rope_rerotate")
    kvd = importlib.import_module("triton_kernels.kv_deviation")
    kvs = importlib.import_module("triton_kernels.kv_scatter")
    sa = importlib.import_module("triton_kernels.selective_attention")

    torch.manual_seed(0)
    dev, dtype = "cuda", DTYPES[args.dtype]
    L, Hq, Hkv, D, T = args.layers, args.q_heads, args.kv_heads, args.head_dim, args.context
    n_sel = max(1, round(args.select * T))
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    check = not args.no_check
    rows: list[Row] = []

    # rope_rerotate: every layer's keys of the context at once. k: [L * Hkv, T, D]
    k_all = torch.randn(L * Hkv, T, D, device=dev, dtype=dtype)
    delta = torch.randint(-T, T, (T,), device=dev)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, D, 2, device=dev).float() / D))  # [D / 2]
    if check:
        out = rr.rope_rerotate(k_all, delta, inv_freq)
        torch.testing.assert_close(out, rr.rope_rerotate_ref(k_all, delta, inv_freq), **tol)
    b = 2 * nbytes(k_all) + nbytes(delta, inv_freq)
    ms = do_bench(lambda: rr.rope_rerotate(k_all, delta, inv_freq))
    rows.append(Row("rope_rerotate", f"k [{L * Hkv}, {T}, {D}]", ms, b / 1e9, copy_ms(do_bench, b)))

    # kv_deviation: one layer (as CacheBlend scores it) and every layer. new, old: [H, T, D]
    for heads, scope in [(Hkv, "layer"), (L * Hkv, "all layers")]:
        new = torch.randn(heads, T, D, device=dev, dtype=dtype)
        old = new + 0.1 * torch.randn_like(new)
        if check:
            torch.testing.assert_close(kvd.kv_deviation(new, old), kvd.kv_deviation_ref(new, old), rtol=1e-3, atol=1e-3)
        b = nbytes(new, old) + T * 4
        ms = do_bench(lambda new=new, old=old: kvd.kv_deviation(new, old))
        rows.append(Row("kv_deviation", f"[{heads}, {T}, {D}] ({scope})", ms, b / 1e9, copy_ms(do_bench, b)))

    # kv_scatter: recomputed rows into one layer's view of the cache buffer [L, Hkv, T, D]
    buf = torch.zeros(L, Hkv, T, D, device=dev, dtype=dtype)
    src = torch.randn(Hkv, n_sel, D, device=dev, dtype=dtype)
    index = torch.randperm(T, device=dev)[:n_sel]
    layer = buf[L - 1]  # [Hkv, T, D] view: head stride T * D
    if check:
        expect = buf.clone()
        kvs.kv_scatter_ref(expect[L - 1], src, index)
        kvs.kv_scatter(layer, src, index)
        torch.testing.assert_close(buf, expect, atol=0, rtol=0)
    b = 2 * nbytes(src) + nbytes(index)
    ms = do_bench(lambda: kvs.kv_scatter(layer, src, index))
    shape = f"src [{Hkv}, {n_sel}, {D}] into [{Hkv}, {T}, {D}]"
    rows.append(Row("kv_scatter", shape, ms, b / 1e9, copy_ms(do_bench, b)))

    # selective_attention: the selected queries of one layer over the whole blended context
    q = torch.randn(Hq, n_sel, D, device=dev, dtype=dtype)
    k = torch.randn(Hkv, T, D, device=dev, dtype=dtype)
    v = torch.randn(Hkv, T, D, device=dev, dtype=dtype)
    kv_pos = torch.arange(T, device=dev)
    q_pos = torch.randperm(T, device=dev)[:n_sel]
    q_pos[0] = T - 1  # the last prompt token is always recomputed
    scale = D**-0.5
    if check:
        out = sa.selective_attention(q, k, v, q_pos, kv_pos, scale, args.window)
        torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale, args.window), **tol)
    lo = (q_pos - args.window + 1).clamp(min=0) if args.window else torch.zeros_like(q_pos)
    pairs = int((q_pos + 1 - lo).sum())  # visible (query, key) pairs per query head
    flops = 4 * D * pairs * Hq  # q.k and p.v, 2 flops per multiply-add
    b = 2 * nbytes(q) + nbytes(k, v, q_pos, kv_pos)
    ms = do_bench(lambda: sa.selective_attention(q, k, v, q_pos, kv_pos, scale, args.window))
    torch_ms = do_bench(lambda: sa.selective_attention_torch(q, k, v, q_pos, kv_pos, scale, args.window))
    note = f"{flops / (ms * 1e-3) / 1e12:.1f} TFLOP/s; torch path {torch_ms:.3f} ms"
    shape = f"q [{Hq}, {n_sel}, {D}], kv [{Hkv}, {T}, {D}]"
    rows.append(Row("selective_attention", shape, ms, b / 1e9, copy_ms(do_bench, b), note))

    print(f"{torch.cuda.get_device_name()}, {args.dtype}, torch {torch.__version__}\n")
    header = ["kernel", "shape", "ms", "GB/s", "copy GB/s", "ratio", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
