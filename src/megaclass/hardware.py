"""What the hardware computes fast: the matrix-product dtype that ``matmul_dtype = "auto"``
resolves to."""

from __future__ import annotations

import functools

import torch

MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 products


def matmul_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"fp32"``, ``"bf16"``, or ``"auto"``: bf16 on a GPU and on CPUs with native bf16 products
    (AVX-512 BF16 or AMX), fp32 elsewhere, where bf16 products are emulated and run several
    times slower than fp32 (measured in ``benchmarks/results/products.md``)."""
    if name != "auto":
        return MATMUL_DTYPES[name]
    if device.type == "cuda" or (device.type == "cpu" and _cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)
