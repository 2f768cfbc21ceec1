"""Mixed precision for the policy's forward passes (``model.compute_dtype``).

Parameters and optimizer state stay in ``model.dtype`` (float32 by default: the master weights);
the forward passes — generation, teacher-forced log-probs, the update's forward — run under
``torch.autocast(device, dtype)``, so matrix products run in bfloat16/float16 while reductions,
softmax and log-softmax stay in float32 (autocast's op lists). Backward follows the forward's
dtypes; gradients land on the float32 parameters.

Where it pays off is measured, not assumed (``benchmarks/real_model.py``): on CPUs with AMX or
AVX512-BF16 a bfloat16 matrix product is several times faster than float32; on older CPUs
bfloat16 is emulated and slower. :func:`cpu_has_native_bf16` reads the CPU flags.

Why autocast and not bfloat16 parameters: the update adds small increments (lr × Adam step) to
the weights; bfloat16 keeps 8 bits of mantissa, so increments below 2⁻⁸ of a weight are lost.

Each autocast region is one call: one :func:`~grouprl.policy.generate` call (autocast caches
the cast of every trainable parameter for the region, so decoding casts the weights once per
call, not per token) or one micro-batch forward. Never an optimizer step inside a region: the
cache is not invalidated when a parameter changes in place.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

__all__ = ["COMPUTE_DTYPES", "autocast", "compute_dtype", "cpu_has_native_bf16"]

COMPUTE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def compute_dtype(name: str | None) -> torch.dtype | None:
    """The autocast dtype named by ``model.compute_dtype`` (``None``/``"float32"`` = off)."""
    if name is None or name == "float32":
        return None
    try:
        return COMPUTE_DTYPES[name]
    except KeyError:
        raise ValueError(f"compute_dtype: expected null, float32, {', '.join(COMPUTE_DTYPES)}; "
                         f"got {name!r}") from None


def autocast(device: torch.device | str, dtype: torch.dtype | None
             ) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype)``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16 flags, Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return any(f in flags for f in _NATIVE_BF16_FLAGS)
