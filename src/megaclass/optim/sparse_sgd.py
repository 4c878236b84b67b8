"""``SparseSGD``: SGD with momentum that updates only the rows a step touched."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from megaclass.optim.rows import (
    RowSparseOptimizer,
    add_to_rows,
    read_rows,
    touched_rows,
    write_rows,
)


class SparseSGD(RowSparseOptimizer):
    """SGD with momentum, weight decay and optional Nesterov, for row-sparse gradients.

    A sparse COO gradient (as the head produces with a sampler) updates only its rows; a dense
    gradient updates every row, exactly as ``torch.optim.SGD`` (dampening 0) would. For a touched
    row the update is ``torch.optim.SGD``'s:

        d = g + weight_decay * w;  buf = momentum * buf + d;  w -= lr * (d + momentum * buf
        if nesterov else buf)

    Rows that a step does not touch are left exactly as they are (lazy momentum and decay): their
    momentum does not move them, their weights do not decay, and their momentum buffer is not
    decayed either, so when a row is touched again its old momentum resumes where it stopped.
    This keeps a step's cost proportional to the active rows, not to the number of classes.

    The momentum buffer (``state[p]["momentum_buffer"]``, same shape as ``p``) is the same as
    ``torch.optim.SGD``'s, so ``state_dict`` and checkpoints interchange with it.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        rows, values = touched_rows(grad)
        step = values
        if group["weight_decay"]:
            step = values.add(read_rows(param, rows), alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = state["momentum_buffer"]
            moved = read_rows(buffer, rows).mul_(momentum).add_(step)  # in place when dense
            write_rows(buffer, rows, moved)
            step = step.add(moved, alpha=momentum) if group["nesterov"] else moved
        add_to_rows(param, rows, step, alpha=-group["lr"])
