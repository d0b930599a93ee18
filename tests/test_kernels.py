"""Kernels against their plain-torch references on odd sizes and fresh random data.

Triton runs in its CPU interpreter here (tests/conftest.py sets TRITON_INTERPRET=1 before any import),
so shapes stay tiny; `impl="triton"` forces the kernel on CPU tensors.
"""

import importlib
import zlib

import pytest
import torch

import triton_kernels
from blend.rope import apply_rope
from triton_kernels import _dispatch

# The package exports functions named like their modules, so reach the modules through importlib.
rr = importlib.import_module("triton_kernels.rope_rerotate")
kvd = importlib.import_module("triton_kernels.kv_deviation")
kvs = importlib.import_module("triton_kernels.kv_scatter")
sa = importlib.import_module("triton_kernels.selective_attention")

DTYPES = [torch.float32, torch.float16]


def tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}


@pytest.fixture(autouse=True)
def seed(request):
    """Fresh data per test case, reproducible from its name."""
    torch.manual_seed(zlib.crc32(request.node.name.encode()))


def inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))  # [head_dim // 2]


# --- rope_rerotate -------------------------------------------------------------------------------

ROPE_SHAPES = [(1, 1, 24), (2, 7, 64), (3, 33, 24)]  # (n_heads, n_tokens, head_dim)


@pytest.mark.parametrize("shape", ROPE_SHAPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_triton_matches_ref(shape, interleaved, dtype):
    n_heads, n_tokens, head_dim = shape
    k = torch.randn(shape, dtype=dtype)  # [n_heads, n_tokens, head_dim]
    delta = torch.randint(-5000, 5000, (n_tokens,))
    f = inv_freq(head_dim)
    out = rr.rope_rerotate(k, delta, f, interleaved, impl="triton")
    ref = rr.rope_rerotate_ref(k, delta, f, interleaved)
    assert out.dtype == dtype and out.shape == k.shape
    torch.testing.assert_close(out, ref, **tol(dtype))
    assert not torch.allclose(out.float(), k.float(), atol=1e-2)  # it did rotate


@pytest.mark.parametrize("shape", ROPE_SHAPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_rope_in_place_and_into_out_match_ref(shape, interleaved, dtype, impl):
    n_tokens, head_dim = shape[1], shape[2]
    k = torch.randn(shape, dtype=dtype)  # [n_heads, n_tokens, head_dim]
    delta = torch.randint(-5000, 5000, (n_tokens,))
    f = inv_freq(head_dim)
    ref = rr.rope_rerotate_ref(k, delta, f, interleaved)
    out = torch.full_like(k, float("nan"))
    assert rr.rope_rerotate(k, delta, f, interleaved, impl, out=out) is out
    torch.testing.assert_close(out, ref, **tol(dtype))
    same = k.clone()
    assert rr.rope_rerotate(same, delta, f, interleaved, impl, angles=rr.rerotate_angles(delta, f), out=same) is same
    torch.testing.assert_close(same, ref, **tol(dtype))
    wide = torch.randn(shape[0], n_tokens + 5, head_dim + 8, dtype=dtype)  # a view into a bigger cache
    view = wide[:, 2 : 2 + n_tokens, :head_dim]
    view.copy_(k)
    before = wide.clone()
    rr.rope_rerotate(view, delta, f, interleaved, impl, out=view)
    torch.testing.assert_close(view, ref, **tol(dtype))
    outside = torch.ones_like(wide, dtype=torch.bool)
    outside[:, 2 : 2 + n_tokens, :head_dim] = False
    assert torch.equal(wide[outside], before[outside])  # nothing around the view was written


def test_rope_out_must_match_k():
    k = torch.randn(2, 5, 24)
    with pytest.raises(ValueError, match="out must match k"):
        rr.rope_rerotate(k, torch.arange(5), inv_freq(24), out=torch.empty(2, 5, 24, dtype=torch.float16))


def test_rope_ref_is_the_models_formula():
    """Half-split reference == x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), as the model applies RoPE."""
    k = torch.randn(3, 9, 40)
    delta = torch.randint(-3000, 3000, (9,))
    f = inv_freq(40)
    angle = delta.double()[:, None] * f.double()[None, :]  # [9, 20]
    cos_full = torch.cat((angle.cos(), angle.cos()), dim=-1).float()  # [9, 40]
    sin_full = torch.cat((angle.sin(), angle.sin()), dim=-1).float()
    torch.testing.assert_close(rr.rope_rerotate_ref(k, delta, f), apply_rope(k, cos_full, sin_full))


def test_rope_ref_interleaved_is_complex_multiplication():
    k = torch.randn(2, 5, 24)
    delta = torch.randint(-100, 100, (5,))
    f = inv_freq(24)
    rot = torch.polar(torch.ones(5, 12, dtype=torch.float64), delta.double()[:, None] * f.double())  # [5, 12]
    expect = torch.view_as_real(torch.view_as_complex(k.double().reshape(2, 5, 12, 2)) * rot).reshape(2, 5, 24)
    torch.testing.assert_close(rr.rope_rerotate_ref(k, delta, f, interleaved=True), expect.float())


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_composes_and_zero_is_identity(impl, interleaved):
    k = torch.randn(2, 7, 24)
    d1, d2 = torch.randint(-2000, 2000, (7,)), torch.randint(-2000, 2000, (7,))
    f = inv_freq(24)
    twice = rr.rope_rerotate(rr.rope_rerotate(k, d1, f, interleaved, impl), d2, f, interleaved, impl)
    torch.testing.assert_close(twice, rr.rope_rerotate(k, d1 + d2, f, interleaved, impl), atol=1e-5, rtol=1e-5)
    assert torch.equal(rr.rope_rerotate(k, torch.zeros(7, dtype=torch.int64), f, interleaved, impl), k)


def test_rope_triton_on_strided_views():
    big = torch.randn(3, 20, 64)
    k = big[:, 4:11]  # [3, 7, 64]: head stride 20 * 64, token stride 64
    delta = torch.randint(-50, 50, (7,))
    f = inv_freq(64)
    torch.testing.assert_close(rr.rope_rerotate(k, delta, f, impl="triton"), rr.rope_rerotate_ref(k, delta, f))
    k_cols = torch.randn(3, 7, 64, 2)[..., 0]  # last-dim stride 2: the wrapper falls back to torch
    torch.testing.assert_close(
        rr.rope_rerotate(k_cols, delta, f, impl="triton"), rr.rope_rerotate_ref(k_cols.contiguous(), delta, f)
    )


@pytest.mark.parametrize(
    "k, delta, f",
    [
        (torch.randn(2, 5, 23), torch.arange(5), torch.ones(11)),  # odd head_dim
        (torch.randn(2, 5, 24), torch.arange(5, dtype=torch.int32), torch.ones(12)),  # delta dtype
        (torch.randn(2, 5, 24), torch.arange(4), torch.ones(12)),  # delta length
        (torch.randn(2, 5, 24), torch.arange(5), torch.ones(10)),  # inv_freq length
        (torch.randn(5, 24), torch.arange(5), torch.ones(12)),  # k not 3-D
    ],
)
def test_rope_rejects_bad_input(k, delta, f):
    with pytest.raises(ValueError):
        rr.rope_rerotate(k, delta, f, impl="triton")


# --- kv_deviation --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 24), (2, 7, 64), (3, 33, 24)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_deviation_triton_matches_ref(shape, dtype):
    new = torch.randn(shape, dtype=dtype)
    old = torch.randn(shape[0], shape[1] + 5, shape[2], dtype=dtype)[:, 5:]  # strided view
    out = kvd.kv_deviation(new, old, impl="triton")
    assert out.dtype == torch.float32 and out.shape == (shape[1],)
    torch.testing.assert_close(out, kvd.kv_deviation_ref(new, old), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_kv_deviation_known_values(impl):
    new = torch.zeros(3, 4, 24, dtype=torch.float16)
    new[1, 2, 5] = 2.0  # token 2 deviates by 4 in one head, one lane
    new[:, 3] = 1.0  # token 3 deviates by 1 in every lane of every head
    out = kvd.kv_deviation(new, torch.zeros_like(new), impl=impl)
    assert out.tolist() == [0.0, 0.0, 4.0, 3 * 24.0]


def test_kv_deviation_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        kvd.kv_deviation(torch.randn(2, 5, 8), torch.randn(2, 6, 8))
    with pytest.raises(ValueError, match="dtype"):
        kvd.kv_deviation(torch.randn(2, 5, 8), torch.randn(2, 5, 8, dtype=torch.float16))


# --- kv_scatter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads, n_sel, head_dim", [(1, 1, 24), (2, 7, 64), (3, 33, 24)])
@pytest.mark.parametrize("src_dtype, dst_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16)])
def test_kv_scatter_triton_matches_ref_into_a_layer_view(n_heads, n_sel, head_dim, src_dtype, dst_dtype):
    buf = torch.randn(3, n_heads, 50, head_dim).to(dst_dtype)  # [n_layers, n_heads, capacity, head_dim]
    expect = buf.clone()
    src = torch.randn(n_heads, n_sel, head_dim, dtype=src_dtype)
    index = torch.randperm(40)[:n_sel]
    kvs.kv_scatter(buf[1, :, 5:45], src, index, impl="triton")  # head stride 50 * head_dim, slots offset 5
    kvs.kv_scatter_ref(expect[1, :, 5:45], src, index)
    assert torch.equal(buf, expect)  # written rows match, nothing else touched


def test_kv_scatter_triton_falls_back_on_strided_last_dim():
    buf = torch.zeros(2, 10, 16)
    src = torch.randn(2, 3, 8)
    kvs.kv_scatter(buf[..., ::2], src, torch.tensor([7, 0, 4]), impl="triton")  # last-dim stride 2: torch path
    assert torch.equal(buf[:, [7, 0, 4], ::2], src)
    assert buf[..., 1::2].abs().sum() == 0


def test_kv_scatter_ref_writes_exactly_the_indexed_slots():
    dst = torch.zeros(2, 10, 8)
    src = torch.randn(2, 3, 8)
    kvs.kv_scatter_ref(dst, src, torch.tensor([7, 0, 4]))
    assert torch.equal(dst[:, [7, 0, 4]], src)
    assert dst[:, [1, 2, 3, 5, 6, 8, 9]].abs().sum() == 0


@pytest.mark.parametrize(
    "dst, src, index, match",
    [
        (torch.zeros(2, 10, 8), torch.zeros(2, 3, 8), torch.tensor([1, 2, 3], dtype=torch.int32), "int64"),
        (torch.zeros(2, 10, 8), torch.zeros(2, 3, 8), torch.tensor([1, 2]), "slots"),
        (torch.zeros(2, 10, 8), torch.zeros(3, 3, 8), torch.tensor([1, 2, 3]), "heads"),
        (torch.zeros(2, 10, 8), torch.zeros(2, 3, 4), torch.tensor([1, 2, 3]), "head_dim"),
    ],
)
def test_kv_scatter_rejects_bad_input(dst, src, index, match):
    with pytest.raises(ValueError, match=match):
        kvs.kv_scatter(dst, src, index, impl="triton")


# --- selective_attention -------------------------------------------------------------------------

ATTN_SHAPES = [  # (n_q_heads, n_kv_heads, head_dim, n_q, n_kv)
    (1, 1, 24, 1, 7),
    (2, 2, 64, 7, 33),
    (4, 2, 24, 33, 40),
    (3, 1, 64, 7, 33),
]


def attn_inputs(n_q_heads, n_kv_heads, head_dim, n_q, n_kv, dtype=torch.float32):
    q = torch.randn(n_q_heads, n_q, head_dim, dtype=dtype)
    k = torch.randn(n_kv_heads, n_kv, head_dim, dtype=dtype)
    v = torch.randn(n_kv_heads, n_kv, head_dim, dtype=dtype)
    kv_pos = torch.arange(n_kv) * 2 + 3  # sorted, gapped, first key at position 3
    q_pos = torch.randint(3, 2 * n_kv + 3, (n_q,))  # any order, duplicates allowed, each sees key 0
    return q, k, v, q_pos, kv_pos, head_dim**-0.5


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_selective_attention_matches_ref(shape, window, dtype, impl):
    q, k, v, q_pos, kv_pos, scale = attn_inputs(*shape, dtype=dtype)
    out = sa.selective_attention(q, k, v, q_pos, kv_pos, scale, window, impl=impl)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale, window), **tol(dtype))


@pytest.mark.parametrize("window", [None, 5])
def test_selective_attention_triton_skips_key_blocks_correctly(monkeypatch, window):
    """Small blocks: several query blocks, each with its own key range, key ranges not block-aligned."""
    monkeypatch.setattr(sa, "BLOCK_M", 16)
    monkeypatch.setattr(sa, "BLOCK_N", 16)
    q, k, v, q_pos, kv_pos, scale = attn_inputs(2, 1, 24, 37, 70)
    out = sa.selective_attention(q, k, v, q_pos, kv_pos, scale, window, impl="triton")
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale, window), **tol(q.dtype))


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_attention_torch_blocks(window, dtype):
    q, k, v, q_pos, kv_pos, scale = attn_inputs(4, 2, 24, 37, 70, dtype=dtype)
    out = sa.selective_attention_torch(q, k, v, q_pos, kv_pos, scale, window, block=4)
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale, window), **tol(dtype))


@pytest.mark.parametrize("n_prefix", [0, 1, 21])
@pytest.mark.parametrize("n_before", [0, 9])
@pytest.mark.parametrize("heads", [(4, 2), (3, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_attention_torch_causal_run(n_prefix, n_before, heads, dtype):
    """The queries are the last keys' own tokens in order (a prompt after reused KV, a chunked prefill): the
    two-call causal path; with other queries before them (any positions, any order): the blocks."""
    n_run = 37
    q, k, v, _, _, scale = attn_inputs(heads[0], heads[1], 24, n_before + n_run, n_prefix + n_run, dtype=dtype)
    kv_pos = torch.arange(n_prefix + n_run) * 2 + 5  # gapped: the run needs increasing positions, not consecutive
    q_pos = torch.cat([kv_pos[torch.randint(0, n_prefix + n_run, (n_before,))], kv_pos[n_prefix:]])
    assert sa._is_causal_run(q_pos, kv_pos) == (n_before == 0)
    out = sa.selective_attention_torch(q, k, v, q_pos, kv_pos, scale, block=4)
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale), **tol(dtype))


def test_causal_run_only_for_in_order_last_keys_at_increasing_positions():
    kv_pos = torch.arange(10)
    assert sa._is_causal_run(torch.tensor([7, 8, 9]), kv_pos)
    assert sa._is_causal_run(torch.arange(10), kv_pos)  # the whole cache: a fresh prefill
    assert not sa._is_causal_run(torch.tensor([2, 0, 8, 9]), kv_pos)  # a run after other queries: blocks
    assert not sa._is_causal_run(torch.tensor([6, 7, 8]), kv_pos)  # not the last keys
    assert not sa._is_causal_run(torch.tensor([9, 8]), kv_pos)  # not in order
    assert not sa._is_causal_run(torch.tensor([5, 5]), torch.tensor([0, 5, 5]))  # a shared position: no square
    assert not sa._is_causal_run(torch.tensor([5, 6]), torch.tensor([0, 5, 5, 6]))  # an earlier key at 5 too
    assert not sa._is_causal_run(torch.arange(12), kv_pos)  # more queries than keys


def test_block_key_ranges_cover_exactly_the_visible_keys():
    kv_pos = torch.arange(20) * 3  # 0, 3, ..., 57
    q_pos = torch.tensor([50, 4, 30, 9, 7])
    order, lo, hi = sa._block_key_ranges(q_pos, kv_pos, window=6, block=2)
    assert order.tolist() == [1, 4, 3, 2, 0]  # positions 4, 7, 9, 30, 50
    # block (4, 7): keys > 4 - 6 and <= 7 -> rows 0..2; (9, 30): > 3, <= 30 -> rows 2..10; (50): > 44, <= 50 -> 15..16
    assert list(zip(lo.tolist(), hi.tolist(), strict=True)) == [(0, 3), (2, 11), (15, 17)]


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_selective_attention_is_per_position_not_bottom_right(impl):
    n_kv = 41
    q = torch.randn(2, 3, 24)
    k, v = torch.randn(1, n_kv, 24), torch.randn(1, n_kv, 24)
    q_pos, kv_pos = torch.tensor([3, 40, 10]), torch.arange(n_kv)
    out = sa.selective_attention(q, k, v, q_pos, kv_pos, 0.2, impl=impl)
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, 0.2), atol=1e-5, rtol=1e-5)
    bottom_right = torch.ones(3, n_kv, dtype=torch.bool).tril(diagonal=n_kv - 3)  # query i sees keys <= 38 + i
    wrong = torch.nn.functional.scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=bottom_right, scale=0.2, enable_gqa=True
    )[0]
    assert (out - wrong)[:, [0, 2]].abs().max() > 0.1  # early queries listed among late ones differ
    # and the per-position answer for query 0 uses only keys 0..3
    only_visible = sa.selective_attention_ref(q[:, :1], k[:, :4], v[:, :4], q_pos[:1], kv_pos[:4], 0.2)
    torch.testing.assert_close(out[:, :1], only_visible, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_selective_attention_unsorted_kv_pos(impl):
    q, k, v, q_pos, kv_pos, scale = attn_inputs(4, 2, 24, 9, 33)
    perm = torch.randperm(33)
    k_p, v_p, kv_pos_p = k[:, perm], v[:, perm], kv_pos[perm]  # same keys, shuffled
    assert not bool((kv_pos_p[1:] >= kv_pos_p[:-1]).all())
    out = sa.selective_attention(q, k_p, v_p, q_pos, kv_pos_p, scale, window=7, impl=impl)
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale, window=7))


def test_selective_attention_triton_falls_back_on_strided_last_dim():
    q, k, v, q_pos, kv_pos, scale = attn_inputs(2, 1, 24, 5, 20)
    q_cols = torch.stack((q, torch.randn_like(q)), dim=-1)[..., 0]  # [2, 5, 24], last-dim stride 2
    out = sa.selective_attention(q_cols, k, v, q_pos, kv_pos, scale, impl="triton")
    torch.testing.assert_close(out, sa.selective_attention_ref(q, k, v, q_pos, kv_pos, scale))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"v": torch.randn(2, 32, 24)}, "k and v"),
        ({"q": torch.randn(3, 9, 24)}, "multiple"),
        ({"q": torch.randn(4, 9, 16)}, "head_dim"),
        ({"q_pos": torch.zeros(9, dtype=torch.int32)}, "q_pos"),
        ({"kv_pos": torch.arange(32)}, "kv_pos"),
        ({"window": 0}, "window"),
        ({"k": torch.randn(2, 33, 24, dtype=torch.float16)}, "dtype"),
    ],
)
def test_selective_attention_rejects_bad_input(change, match):
    q, k, v, q_pos, kv_pos, scale = attn_inputs(4, 2, 24, 9, 33)
    args = {"q": q, "k": k, "v": v, "q_pos": q_pos, "kv_pos": kv_pos, "scale": scale, "window": None} | change
    with pytest.raises(ValueError, match=match):
        sa.selective_attention(**args, impl="triton")


# --- dispatch ------------------------------------------------------------------------------------


class _Forbidden:
    """Stands in for a kernel or torch path that the dispatch must not take."""

    def __getitem__(self, grid):
        raise AssertionError("this path must not run")

    def __call__(self, *args, **kwargs):
        raise AssertionError("this path must not run")


def test_cpu_auto_path_uses_torch(monkeypatch):
    monkeypatch.setattr(rr, "_rope_rerotate_kernel", _Forbidden())
    monkeypatch.setattr(sa, "_selective_attention_kernel", _Forbidden())
    k = torch.randn(2, 5, 8)
    rr.rope_rerotate(k, torch.arange(5), inv_freq(8))
    q, k, v, q_pos, kv_pos, scale = attn_inputs(2, 1, 8, 3, 6)
    sa.selective_attention(q, k, v, q_pos, kv_pos, scale)


def test_without_triton_auto_uses_torch_and_triton_raises(monkeypatch):
    monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
    new, old = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(kvd.kv_deviation(new, old), kvd.kv_deviation_ref(new, old))
    with pytest.raises(ValueError, match="triton"):
        kvd.kv_deviation(new, old, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        kvd.kv_deviation(new, old, impl="cuda")


def test_package_exports():
    assert triton_kernels.__all__ == ["kv_deviation", "kv_scatter", "rope_rerotate", "selective_attention"]


@pytest.mark.gpu
def test_cuda_auto_path_picks_triton(monkeypatch):
    dev = "cuda"
    k = torch.randn(2, 40, 128, device=dev, dtype=torch.float16)
    delta, f = torch.randint(-500, 500, (40,), device=dev), inv_freq(128).to(dev)
    rope_expect = rr.rope_rerotate_ref(k, delta, f)
    q, kk, v, q_pos, kv_pos, scale = attn_inputs(12, 2, 128, 70, 300, dtype=torch.float16)
    q, kk, v, q_pos, kv_pos = (t.to(dev) for t in (q, kk, v, q_pos, kv_pos))
    attn_expect = sa.selective_attention_ref(q, kk, v, q_pos, kv_pos, scale)
    dev_expect = kvd.kv_deviation_ref(k, k.flip(1))
    dst, dst_expect = torch.zeros(2, 50, 128, device=dev), torch.zeros(2, 50, 128, device=dev)
    index = torch.randperm(50, device=dev)[:40]
    kvs.kv_scatter_ref(dst_expect, k, index)
    for module, name in [
        (rr, "rope_rerotate_ref"),
        (kvd, "kv_deviation_ref"),
        (kvs, "kv_scatter_ref"),
        (sa, "selective_attention_torch"),
        (sa, "selective_attention_ref"),
    ]:
        monkeypatch.setattr(module, name, _Forbidden())
    torch.testing.assert_close(rr.rope_rerotate(k, delta, f), rope_expect, **tol(torch.float16))
    attn = sa.selective_attention(q, kk, v, q_pos, kv_pos, scale)
    torch.testing.assert_close(attn, attn_expect, **tol(torch.float16))
    torch.testing.assert_close(kvd.kv_deviation(k, k.flip(1)), dev_expect, rtol=1e-4, atol=1e-4)
    kvs.kv_scatter(dst, k, index)
    assert torch.equal(dst, dst_expect)


def test_rope_rerotate_with_precomputed_angles_equals_computing_them():
    k = torch.randn(3, 37, 24)
    delta = torch.randint(-5000, 40000, (37,))
    f = inv_freq(24)
    same = rr.rope_rerotate(k, delta, f, impl="torch", angles=rr.rerotate_angles(delta, f))
    assert torch.equal(same, rr.rope_rerotate(k, delta, f, impl="torch"))
    # Angles of another delta rotate by that delta instead: they are used, not recomputed.
    other = rr.rope_rerotate(k, delta, f, impl="torch", angles=rr.rerotate_angles(delta + 1, f))
    assert torch.equal(other, rr.rope_rerotate(k, delta + 1, f, impl="torch"))
