"""Scratch memory for the [batch, classes] blocks of the softmax, reused from step to step.

A block of 10^8 logits is 400 MB. glibc returns allocations that large to the system when they
are freed and maps fresh pages for the next, and the first write to each page then faults: on
the 2-core benchmark machine converting [1024, 100000] fp32 to bf16 took 144 ms into a new tensor
and 18 ms into an existing one. So the softmax takes its large buffers from here: one block per
(slot, dtype, device), grown when a larger one is asked for and handed out again once nothing
uses it any more.

A block counts as in use while any tensor other than the workspace's own still refers to its
memory (a view, a view of a view, a tensor saved for backward): then ``take`` allocates a fresh
tensor instead, so two forward passes before one backward pass never share memory. The cost is
that the largest block of each slot stays allocated for the life of the process.
"""

from __future__ import annotations

import math

import torch

_blocks: dict[tuple[str, torch.dtype, torch.device], tuple[torch.Tensor, int]] = {}


def take(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """An uninitialised tensor of ``shape``, from the workspace block of ``slot`` if it is free."""
    size = math.prod(shape)
    key = (slot, dtype, torch.device(device))
    block, idle_count = _blocks.get(key, (None, 0))
    if block is not None and _use_count(block) > idle_count:
        return torch.empty(shape, dtype=dtype, device=device)  # held by an unfinished step
    if block is None or block.numel() < size:
        del block
        _blocks.pop(key, None)  # the old block is freed before the larger one is allocated
        block = torch.empty(size, dtype=dtype, device=device)
        _blocks[key] = (block, _use_count(block))
    return block[:size].view(shape)


def _use_count(block: torch.Tensor) -> int:
    """References to the block's memory (each tensor viewing it holds one)."""
    return torch._C._storage_Use_Count(block.untyped_storage()._cdata)
