"""Fused Triton kernels, each with a plain-torch reference beside it (kernels land with CacheBlend)."""

from triton_kernels.kv_deviation import kv_deviation
from triton_kernels.kv_scatter import kv_scatter
from triton_kernels.rope_rerotate import rope_rerotate
from triton_kernels.selective_attention import selective_attention

__all__ = ["kv_deviation", "kv_scatter", "rope_rerotate", "selective_attention"]
