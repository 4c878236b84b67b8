"""``RowAdaGrad``: AdaGrad with one accumulator per row, updating only the rows a step touched."""

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


class RowAdaGrad(RowSparseOptimizer):
    """Row-wise AdaGrad (as in DLRM/FBGEMM embedding tables) for row-sparse gradients.

    Each row ``r`` of a parameter [num_rows, ...] has one accumulator, ``state[p]["sum_sq"]``
    [num_rows]. For a touched row, with ``g`` its gradient row:

        g = g + weight_decay * w;  sum_sq[r] += mean(g ** 2);  w -= lr * g / (sqrt(sum_sq[r]) + eps)

    The state is 1/dim of the weights (4 bytes per class), where momentum SGD needs a full copy:
    this is the optimizer for the largest class counts. Rows a step does not touch are left
    exactly as they are (no decay, no accumulator change). A dense gradient touches every row.
    """

    ROW_STATE = ("sum_sq",)
    DRAWN_ROWS = "corrected"  # a row's step is scaled by its own gradient history

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not eps > 0 or initial_accumulator_value < 0:
            raise ValueError(
                f"eps must be > 0 and initial_accumulator_value >= 0, got {eps}, "
                f"{initial_accumulator_value}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "eps": eps,
            "initial_accumulator_value": initial_accumulator_value,
        }
        super().__init__(params, defaults)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        rows, values = touched_rows(grad)
        if group["weight_decay"]:
            values = values.add(read_rows(param, rows), alpha=group["weight_decay"])
        state = self.state[param]
        if "sum_sq" not in state:
            state["sum_sq"] = torch.full(
                param.shape[:1], group["initial_accumulator_value"], device=param.device
            )
        sum_sq = read_rows(state["sum_sq"], rows) + values.float().pow(2).flatten(1).mean(1)
        write_rows(state["sum_sq"], rows, sum_sq)
        scale = group["lr"] / (sum_sq.sqrt() + group["eps"])  # [n]
        shape = (-1,) + (1,) * (values.dim() - 1)
        add_to_rows(param, rows, scale.view(shape).to(values.dtype) * values, alpha=-1.0)
