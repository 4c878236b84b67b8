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

MAX_LAG = 1024  # steps a row may lag: each step brings 1 / MAX_LAG of the rows up to date
# the defaults, which `megaclass train` uses too (`[optim]`, docs/defaults.md)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
ROW_NORM = 0.3  # for a head with a cosine margin


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
    The catch-up follows the learning rate of each missed step: the optimizer keeps the rates of
    its last ``MAX_LAG`` steps as the maps of the newest 0, 1, ..., ``MAX_LAG`` steps
    (``state[p]["idle_maps"]``, float64 [MAX_LAG + 1, 2, 2], one batched product per step) and
    each step also brings ``1 / MAX_LAG`` of the rows up to date (a fixed slice in turn), so
    that no row lags longer.
    A catch-up that used the current rate instead lost most of the momentum of rare rows while
    the rate decays (see ``benchmarks/results/stability.md``). ``catch_up()`` brings every row
    up to date (before evaluating or exporting the weights); catching up never changes where a
    row goes, only when it gets there. A step's cost stays proportional to its active rows
    (plus ``num_rows / MAX_LAG``).

    The defaults (momentum, weight decay, and a row norm for a head whose margin normalises)
    are those ``megaclass train`` uses; ``momentum=0, weight_decay=0, row_norm=0`` is plain
    ``torch.optim.SGD``'s default.

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

    ROW_STATE = ("momentum_buffer", "last_step")
    DRAWN_ROWS = "one_step"  # momentum would carry a corrected push on for many steps

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor],
        lr: float,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        nesterov: bool = False,
        row_norm: float | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if row_norm is None:  # a head with a cosine margin (logits see only the rows' directions)
            normalized = getattr(getattr(params, "margin", None), "normalize", False)
            row_norm = ROW_NORM if normalized else 0.0
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
        state = self._row_state(param, group) if momentum or decay else None
        if state is not None:
            buffer = state.get("momentum_buffer")
            momenta = None if buffer is None else read_rows(buffer, rows)
            self._catch_up(state, group, weights, momenta, read_rows(state["last_step"], rows))
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
        if state is not None:
            state["idle_maps"] = _one_step_more(state["idle_maps"], lr, group)
            if rows is not None:  # a dense gradient leaves no row behind
                part, n = int(state["step"]) % MAX_LAG, len(param)
                lagging = slice(part * n // MAX_LAG, (part + 1) * n // MAX_LAG)
                self._catch_up_rows(param, state, group, lagging)

    @torch.no_grad()
    def catch_up(self) -> None:
        """Bring every row up to date: apply the momentum and decay of the steps it missed."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param, {})
                if "last_step" in state:
                    self._catch_up_rows(param, state, group, slice(None))

    def _row_state(self, param: torch.Tensor, group: dict) -> dict:
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0)
        if "last_step" not in state:  # a fresh run, or momentum state from torch.optim.SGD
            state["last_step"] = torch.full(
                param.shape[:1], int(state["step"]), dtype=torch.int32, device=param.device
            )
        if "idle_maps" not in state:  # as if the learning rate had been constant until now
            maps = torch.eye(2, dtype=torch.float64)[None]
            for _ in range(MAX_LAG):
                maps = _one_step_more(maps, group["lr"], group, MAX_LAG + 1)
            state["idle_maps"] = maps
        if group["momentum"] and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        return state

    def _catch_up_rows(self, param: torch.Tensor, state: dict, group: dict, rows: slice) -> None:
        """Bring ``param[rows]`` up to date, at the norm."""
        weights, last_step = param[rows], state["last_step"][rows]
        buffer = state.get("momentum_buffer")
        self._catch_up(state, group, weights, None if buffer is None else buffer[rows], last_step)
        last_step.fill_(int(state["step"]))
        rescale_rows(weights, None, group["row_norm"])

    def _catch_up(self, state: dict, group: dict, weights, momenta, last_step) -> None:
        """Advance, in place, the weights [n, D] and momenta [n, D] (or None) of rows last
        updated at steps ``last_step`` [n] over the steps each has missed since."""
        missed = int(state["step"]) - last_step  # [n]
        if bool((missed < 0).any()):
            raise RuntimeError(
                f"SparseSGD state is inconsistent: rows were last updated at step "
                f"{int(state['step'] - missed.min())} but the step count is {int(state['step'])}; "
                f"restore state['step'] together with state['last_step']"
            )
        if not bool(missed.any()):
            return
        # The missed-step counts take few distinct values: one map per value (the identity for
        # rows that missed none), applied to every row in place.
        counts, which = missed.unique(return_inverse=True)
        maps = _idle_steps_maps(counts.cpu(), state["idle_maps"], group)
        (ww, wb), (bw, bb) = [
            [maps[:, i, j].to(weights.device)[which][:, None] for j in range(2)] for i in range(2)
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


def _idle_steps_maps(missed: torch.Tensor, idle_maps: torch.Tensor, group: dict) -> torch.Tensor:
    """The maps of the newest ``m`` steps for each ``m`` in ``missed`` [n] (int64): float32
    [n, 2, 2]. A row lags at most ``MAX_LAG`` steps, except in state saved before the maps were
    kept, whose older steps take the current learning rate."""
    known = len(idle_maps) - 1
    maps = idle_maps[missed.clamp(max=known)]
    for i in (missed > known).nonzero().flatten().tolist():
        older = torch.linalg.matrix_power(_step_map(group["lr"], group), int(missed[i]) - known)
        maps[i] = maps[i] @ older
    return maps.float()


def _one_step_more(
    idle_maps: torch.Tensor, lr: float, group: dict, size: int | None = None
) -> torch.Tensor:
    """The maps of the newest 0, 1, ... steps after one more step at ``lr``: [k, 2, 2] ->
    [size or k, 2, 2]. The newest m steps are the new step after the newest m - 1 before it."""
    size = size or len(idle_maps)
    newer = _step_map(lr, group) @ idle_maps[: size - 1]
    return torch.cat([torch.eye(2, dtype=torch.float64)[None], newer])


def _step_map(lr: float, group: dict) -> torch.Tensor:
    """[2, 2] float64: (weight, momentum) -> after one step of ``torch.optim.SGD`` at ``lr`` with
    a zero gradient; with m (momentum) and wd (weight decay):
        buf' = m * buf + wd * w
        w'   = w - lr * buf'                          = (1 - lr wd) w - lr m buf
        w'   = w - lr * (wd * w + m * buf')  (Nesterov) = (1 - lr wd (1 + m)) w - lr m^2 buf
    """
    m, wd = group["momentum"], group["weight_decay"]
    if group["nesterov"]:
        return torch.tensor([[1 - lr * wd * (1 + m), -lr * m * m], [wd, m]], dtype=torch.float64)
    return torch.tensor([[1 - lr * wd, -lr * m], [wd, m]], dtype=torch.float64)
