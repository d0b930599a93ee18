"""Choose between a Triton kernel and its torch path, and import Triton only where it exists.

Every public kernel wrapper takes `impl: str | None`:
  None / "auto"  Triton when every tensor is on CUDA and triton imports, else the torch path;
  "triton"       the Triton kernel (on CPU tensors this needs the interpreter, TRITON_INTERPRET=1,
                 set before the kernel modules import: that is how the tests run it);
  "torch"        the torch path.
Without triton installed the kernel modules still import: `jit` leaves the kernels as plain,
never-launched functions and `tl` is a stub that only answers `tl.constexpr` annotations.
"""

from __future__ import annotations

import logging
import types

import torch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: every wrapper takes its torch path
    triton = None
    tl = types.SimpleNamespace(constexpr=int)  # kernel signatures annotate with tl.constexpr
    HAS_TRITON = False

IMPLS = (None, "auto", "triton", "torch")


def jit(fn):
    """`triton.jit` when triton imports, else the function unchanged (it is then never launched)."""
    return triton.jit(fn) if HAS_TRITON else fn


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return HAS_TRITON and bool(triton.knobs.runtime.interpret)


def use_triton(impl: str | None, *tensors: torch.Tensor) -> bool:
    """Whether a wrapper called with `impl` on `tensors` should launch its Triton kernel."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "triton":
        if not HAS_TRITON:
            raise ValueError("impl='triton' but triton cannot be imported")
        if not on_cuda and not interpreting():
            devices = sorted({str(t.device) for t in tensors})
            raise ValueError(f"impl='triton' on devices {devices} needs CUDA or TRITON_INTERPRET=1")
        return True
    return HAS_TRITON and on_cuda


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError naming each tensor's device when they differ."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors on different devices: {devices}")


def check_ndim(ndim: int, **tensors: torch.Tensor) -> None:
    """Raise ValueError with the offending shape when a tensor does not have `ndim` dims."""
    for name, t in tensors.items():
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")


def fall_back(kernel: str, reason: str) -> None:
    """Record that a Triton wrapper took its torch path for an input the kernel does not handle."""
    log.debug("%s: torch path (%s)", kernel, reason)
