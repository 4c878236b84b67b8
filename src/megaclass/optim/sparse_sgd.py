"""``SparseSGD``: SGD with momentum that updates only the rows a step touched."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from megaclass.optim.rows import (
    RowSparseOptimizer,
    read_rows,
    rescale_rows,
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

    Rows a step does not touch are not written (lazy momentum and decay), but they are not
    frozen either: each row remembers the step it was last brought up to date
    (``state[p]["last_step"]``, int32 [num_rows]), and when a step touches it again it first
    catches up on the steps it missed, in closed form, as ``torch.optim.SGD`` would have moved it
    with a zero gradient: its momentum keeps carrying it and decays, and weight decay shrinks it.
    So a row seen once every ten steps travels as far as under dense SGD, not ten times less
    (with momentum 0.9, a gradient moves a row by 10 x lr x g in all, 1 x lr x g of it at once).
    The catch-up is exact when the learning rate was constant over the missed steps; otherwise
    it uses the current one. ``catch_up()`` brings every row up to date (before evaluating or
    exporting the weights). A step's cost stays proportional to its active rows.

    row_norm (> 0, for parameters of 2 or more dimensions): after each update, the rows it wrote
    are rescaled to this norm. For a head whose logits see only each row's direction (cosine
    margins) this changes nothing in the forward pass, but keeps every row's angular step at
    ``lr / row_norm^2`` times its gradient: otherwise a row's norm grows with the square sum of
    its past updates, and a sampled softmax, whose negatives get fewer but larger updates than
    under the full softmax, would slow its rare classes' learning by inflating their norms.
    (Weight decay is then undone by the rescaling; momentum still acts.)

    The momentum buffer (``state[p]["momentum_buffer"]``) is ``torch.optim.SGD``'s; the step
    count is ``state[p]["step"]`` (a 0-dim tensor).
    """

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        row_norm: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if row_norm < 0:
            raise ValueError(f"row_norm must be >= 0 (0: off), got {row_norm}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "row_norm": row_norm,
        }
        super().__init__(params, defaults)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        # One read and one write of the touched rows of the weights and of the momentum: the
        # catch-up, the update and the rescaling work on those copies (on the tensors
        # themselves when the gradient is dense).
        rows, values = touched_rows(grad)
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        weights = read_rows(param, rows)
        buffer = None
        if momentum or decay:
            state = self._row_state(param, group)
            buffer = state.get("momentum_buffer")
            momenta = None if buffer is None else read_rows(buffer, rows)
            self._catch_up_rows(state, rows, weights, momenta, group)
            state["step"] += 1
            write_rows(state["last_step"], rows, state["step"].int().expand(len(values)))
        step = values.add(weights, alpha=decay) if decay else values
        if momentum:
            momenta.mul_(momentum).add_(step)
            write_rows(buffer, rows, momenta)
            step = step.add(momenta, alpha=momentum) if group["nesterov"] else momenta
        weights.add_(step, alpha=-lr)
        rescale_rows(weights, None, group["row_norm"])
        write_rows(param, rows, weights)

    @torch.no_grad()
    def catch_up(self) -> None:
        """Bring every row up to date: apply the momentum and decay of the steps it missed."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param, {})
                if "last_step" in state:
                    self._catch_up_rows(state, None, param, state.get("momentum_buffer"), group)
                    state["last_step"].fill_(int(state["step"]))
                    rescale_rows(param, None, group["row_norm"])

    def _row_state(self, param: torch.Tensor, group: dict) -> dict:
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0)
        if "last_step" not in state:  # a fresh run, or momentum state from torch.optim.SGD
            state["last_step"] = torch.full(
                param.shape[:1], int(state["step"]), dtype=torch.int32, device=param.device
            )
        if group["momentum"] and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        return state

    def _catch_up_rows(self, state: dict, rows, weights, momenta, group: dict) -> None:
        """Advance, in place, the weights [n, D] and momenta (or None) of rows [n] (None: all)
        over the steps each missed since ``state["last_step"]``."""
        missed = int(state["step"]) - read_rows(state["last_step"], rows)  # [n]
        if bool((missed < 0).any()):
            raise RuntimeError(
                f"SparseSGD state is inconsistent: rows were last updated at step "
                f"{int(state['step'] - missed.min())} but the step count is {int(state['step'])}; "
                f"restore state['step'] together with state['last_step']"
            )
        if not bool(missed.any()):
            return
        # The missed-step counts take few distinct values: one matrix power per value (the
        # identity for rows that missed none), applied to every row in place.
        counts, which = missed.unique(return_inverse=True)
        (ww, wb), (bw, bb) = [
            [entry[which][:, None] for entry in row] for row in _idle_steps_matrix(counts, group)
        ]
        if momenta is None:
            weights.mul_(ww)
        elif group["weight_decay"] == 0:  # ww = 1, bw = 0: the momentum alone moves the row
            weights.addcmul_(momenta, wb)
            momenta.mul_(bb)
        else:
            carried = momenta * wb
            momenta.mul_(bb).addcmul_(weights, bw)
            weights.mul_(ww).add_(carried)


def _idle_steps_matrix(missed: torch.Tensor, group: dict) -> list[list[torch.Tensor]]:
    """The 2x2 linear map of (weight, momentum) over ``missed`` [n] steps with zero gradient.

    One such step of ``torch.optim.SGD`` is, with lr, m (momentum), wd (weight decay):
        buf' = m * buf + wd * w
        w'   = w - lr * buf'                          = (1 - lr wd) w - lr m buf
        w'   = w - lr * (wd * w + m * buf')  (Nesterov) = (1 - lr wd (1 + m)) w - lr m^2 buf
    Its ``missed``-th power, by repeated squaring: entries [n] in float32.
    """
    lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
    if group["nesterov"]:
        step = [[1 - lr * wd * (1 + m), -lr * m * m], [wd, m]]
    else:
        step = [[1 - lr * wd, -lr * m], [wd, m]]
    one, zero = (
        torch.ones_like(missed, dtype=torch.float64),
        torch.zeros_like(missed, dtype=torch.float64),
    )
    power = [[one, zero], [zero, one]]
    remaining = missed.clone()
    while bool(remaining.any()):
        odd = (remaining & 1).bool()
        times = _matmul_2x2(power, step)
        power = [[torch.where(odd, times[i][j], power[i][j]) for j in range(2)] for i in range(2)]
        step = _matmul_2x2(step, step)
        remaining >>= 1
    return [[entry.float() for entry in row] for row in power]


def _matmul_2x2(a: list, b: list) -> list:
    """a @ b for 2x2 matrices given as nested lists (of floats or of tensors [n])."""
    return [[a[i][0] * b[0][j] + a[i][1] * b[1][j] for j in range(2)] for i in range(2)]
