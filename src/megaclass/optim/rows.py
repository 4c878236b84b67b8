"""What the row-sparse optimizers share: the step over parameters and row access."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class RowSparseOptimizer(torch.optim.Optimizer):
    """Base of the optimizers that update only the rows a gradient touches.

    ``params`` may be a module (its parameters) or tensors. Subclasses define
    ``_update(param, grad, group)`` and name their per-row state in ``ROW_STATE`` (tensors
    [num_rows, ...] that a checkpoint reshards with the rows); the rest of their state is the
    same for every shard. ``DRAWN_ROWS`` says how the gradient of a row a sampler drew suits
    this optimizer (``ClassifierHead``'s ``drawn_rows``; the trainer sets the head's to it).
    """

    ROW_STATE: tuple[str, ...] = ()
    DRAWN_ROWS = "one_step"

    def __init__(self, params: nn.Module | Iterable[torch.Tensor], defaults: dict) -> None:
        if isinstance(params, nn.Module):
            params = params.parameters()
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, group)
        return loss

    def catch_up(self) -> None:
        """Bring rows that lag behind (lazy updates) up to date; nothing lags by default."""

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        raise NotImplementedError


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(rows, gradient rows) of a step.

    A sparse COO gradient touches its rows: rows [n], values [n, ...]. A dense gradient touches
    every row: rows is None and the values are the gradient itself.
    """
    if not grad.is_sparse:
        return None, grad
    rows = grad._indices()[0]
    # Autograd drops the "coalesced" flag of the head's gradient, whose rows are sorted and
    # distinct already: check that in O(n) rather than sorting again (35 ms at 10^5 rows).
    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()
        rows = grad._indices()[0]
    return rows, grad._values()


def read_rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``tensor`` (a copy), or ``tensor`` itself when rows is None (every row)."""
    return tensor if rows is None else tensor.index_select(0, rows)


def write_rows(tensor: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor) -> None:
    if rows is None:
        if values is not tensor:
            tensor.copy_(values)
    else:
        tensor.index_copy_(0, rows, values)


def add_to_rows(
    tensor: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor, alpha: float
) -> None:
    """tensor[rows] += alpha * values, in place (every row when rows is None)."""
    if rows is None:
        tensor.add_(values, alpha=alpha)
    else:
        tensor.index_add_(0, rows, values, alpha=alpha)


def rescale_rows(tensor: torch.Tensor, rows: torch.Tensor | None, norm: float) -> None:
    """Rows (None: all) of ``tensor`` [n, ...] rescaled to L2 norm ``norm`` (none if it is 0)."""
    if not norm:
        return
    values = read_rows(tensor, rows)
    norms = values.flatten(1).norm(dim=1).clamp_min(1e-12)  # [n]
    write_rows(tensor, rows, values.mul_((norm / norms).view(-1, *[1] * (values.dim() - 1))))
