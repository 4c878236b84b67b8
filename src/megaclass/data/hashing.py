"""Counter-based random numbers: the value for a key depends on nothing else, so a sample can be
generated from (seed, stream, index) alone, in any order, on any rank (splitmix64 finaliser)."""

from __future__ import annotations

import torch


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(keys: torch.Tensor) -> torch.Tensor:
    """splitmix64 of int64 keys (wrapping arithmetic), any shape."""
    z = keys.to(torch.int64) * _GOLDEN + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MUL1
    z = (z ^ _shift_right(z, 27)) * _MUL2
    return z ^ _shift_right(z, 31)


def key(seed: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """A key per index, distinct for each (seed, stream)."""
    return mix(mix(torch.as_tensor(seed * 1_000_003 + stream, dtype=torch.int64)) ^ index)


def uniform(keys: torch.Tensor) -> torch.Tensor:
    """Uniform in (0, 1), float64, one per key."""
    return (_shift_right(mix(keys), 11).double() + 0.5) * 2.0**-53


def normal(keys: torch.Tensor, width: int) -> torch.Tensor:
    """Standard normal [*keys.shape, width], float32 (Box-Muller)."""
    lanes = keys[..., None] * (2 * width + 1) + torch.arange(0, 2 * width, 2)
    u1, u2 = uniform(lanes), uniform(lanes + 1)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)).float()
