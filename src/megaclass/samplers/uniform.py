"""Filling an active set up with uniformly drawn classes, in time proportional to the set."""

from __future__ import annotations

import math

import torch

from megaclass.samplers.selection import Selection

_DENSE_FRACTION = 0.25  # above this share of the shard, one pass over the shard is cheaper


def select_with_fill(
    chosen: torch.Tensor,
    wanted: int,
    num_local: int,
    generator: torch.Generator,
    correct: bool,
) -> Selection:
    """``fill_uniform``, with the logit correction of the drawn rows when ``correct``."""
    rows = fill_uniform(chosen, wanted, num_local, generator)
    return Selection(rows, fill_offsets(rows, chosen, num_local) if correct else None)


def fill_offsets(rows: torch.Tensor, chosen: torch.Tensor, num_local: int) -> torch.Tensor | None:
    """The logit correction of a uniform fill (see ``Selection``): rows [A] (sorted, distinct)
    hold the distinct ``chosen`` rows and a uniform draw of the shard's other rows; each drawn
    row gets log(unchosen / drawn), chosen rows 0. -> [A] fp32, or None when nothing or every
    other row was drawn (no correction)."""
    drawn = ~torch.isin(rows, chosen.to(rows.device))
    unchosen, num_drawn = num_local - len(chosen), int(drawn.sum())
    if num_drawn in (0, unchosen):
        return None
    offsets = torch.zeros(len(rows), device=rows.device)
    offsets[drawn] = math.log(unchosen / num_drawn)
    return offsets


def fill_uniform(
    chosen: torch.Tensor, wanted: int, num_local: int, generator: torch.Generator
) -> torch.Tensor:
    """``chosen`` (distinct local rows) plus uniformly drawn other rows, ``wanted`` in all; sorted.

    chosen [n] (n <= wanted) -> [min(wanted, num_local)]. Every subset of the other rows of the
    right size is equally likely. Costs O(wanted log wanted) when ``wanted`` is a small share of
    the shard (rejection sampling), so a step at 10^7 classes costs what it does at 10^5.
    """
    device = chosen.device
    if wanted >= num_local:
        return torch.arange(num_local, device=device)
    if wanted > _DENSE_FRACTION * num_local:
        # Random scores with the chosen rows forced to the top.
        scores = torch.rand(num_local, generator=generator).to(device)
        scores[chosen] = 2.0
        return _sorted(scores.topk(wanted).indices)
    taken = chosen.cpu()
    while len(taken) < wanted:
        need = wanted - len(taken)
        draws = torch.randint(num_local, (2 * need + 16,), generator=generator)
        fresh = torch.unique(draws)
        fresh = fresh[~torch.isin(fresh, taken)]
        if len(fresh) > need:  # a uniform subset of a uniform random set is uniform
            fresh = fresh[torch.randperm(len(fresh), generator=generator)[:need]]
        taken = torch.cat([taken, fresh])
    return _sorted(taken).to(device)


def _sorted(values: torch.Tensor) -> torch.Tensor:
    # stable=True: torch's default CPU sort of int64 is ~20x slower (190 vs 8 ms at 2 x 10^5).
    return values.sort(stable=True).values


def first_occurrences(values: torch.Tensor) -> torch.Tensor:
    """Distinct values in the order of their first appearance: [m] -> [u]."""
    distinct, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(len(values), device=values.device)
    first = torch.full((len(distinct),), len(values), device=values.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return distinct[first.argsort(stable=True)]
