"""Filling an active set with classes drawn in proportion to how often they were training labels.

A uniform fill estimates the sum of exponentials over the classes not chosen outright from a
uniform sample of them; when a few of those classes carry most of a sample's mass, the estimate
swings with whether they were drawn. Rows once seen as labels have moved towards their samples
and catch more mass than rows still near their random start, so drawing in proportion to
``label count + 0.1`` lowers the estimate's variance (measured in ``docs/benchmarks.md``,
"Kernels").

The draw is stratified, so that its size is exact and its cost O(budget): the shard's classes
are bucketed by label count (0, 1, 2-3, 4-7, ...; rebuilt with the frequent classes), the fill is
split over the buckets in proportion to their unchosen classes' weight, and each bucket's share
is drawn uniformly from its unchosen classes (``fill_uniform``). A class drawn from a bucket with
``u`` unchosen classes of which ``d`` were drawn gets ``log(u / d)`` added to its logits: the
sum over the drawn classes, so weighted, is an unbiased estimate of the sum over all unchosen
classes (stratified sampling), whatever the buckets and their shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megaclass.samplers.selection import Selection
from megaclass.samplers.uniform import fill_uniform

UNSEEN_WEIGHT = 0.1  # a never-seen class's weight, against 1 + 0.1 for a class seen once


@dataclass(frozen=True)
class CountStrata:
    """A shard's classes bucketed by training-label count.

    bucket: [num_local] int64, each class's bucket (``floor(log2(count + 1))``);
    members: [num_local] int64, the local rows sorted by bucket, ascending within one;
    position: [num_local] int64, each row's index in ``members``;
    bounds: [S + 1] int64, bucket ``s`` is ``members[bounds[s]:bounds[s + 1]]``;
    weight: [S] float64, the mean ``count + UNSEEN_WEIGHT`` of each bucket's classes.
    """

    bucket: torch.Tensor
    members: torch.Tensor
    position: torch.Tensor
    bounds: torch.Tensor
    weight: torch.Tensor

    @staticmethod
    def of(counts: torch.Tensor) -> CountStrata:
        """Strata of ``counts`` [num_local] (int64 label counts). O(num_local x buckets), the
        buckets being at most log2 of the largest count + 1 (a counting sort: at 10^7 classes
        faster than a stable sort of the bucket ids)."""
        counts = counts.cpu()
        bucket = torch.frexp((counts + 1).float()).exponent.long() - 1  # floor(log2(count + 1))
        sizes = torch.bincount(bucket)
        members = torch.cat([(bucket == s).nonzero().squeeze(1) for s in range(len(sizes))])
        position = torch.empty_like(members)
        position[members] = torch.arange(len(members))
        totals = torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, bucket, counts.double())
        weight = totals / sizes.clamp_min(1) + UNSEEN_WEIGHT
        bounds = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        return CountStrata(bucket, members, position, bounds, weight)


def select_with_count_fill(
    chosen: torch.Tensor, wanted: int, strata: CountStrata, generator: torch.Generator
) -> Selection:
    """``chosen`` (distinct local rows) plus rows drawn by label count, ``wanted`` in all, with
    their logit correction. -> Selection of [min(wanted, num_local)] sorted rows."""
    device = chosen.device
    chosen = chosen.cpu()
    sizes = strata.bounds.diff()  # [S]
    chosen_buckets = strata.bucket[chosen]  # [n]
    chosen_per_bucket = torch.bincount(chosen_buckets, minlength=len(sizes))
    unchosen = sizes - chosen_per_bucket  # [S]
    draws = _split(max(wanted - len(chosen), 0), unchosen, strata.weight)
    drawn, offsets = [], []
    for s in draws.nonzero().squeeze(1).tolist():
        first, count = int(strata.bounds[s]), int(draws[s])
        in_bucket = chosen[chosen_buckets == s]
        taken = strata.position[in_bucket] - first  # positions of the chosen rows in the bucket
        positions = fill_uniform(taken, len(taken) + count, int(sizes[s]), generator)
        new = positions[~torch.isin(positions, taken)]
        drawn.append(strata.members[first + new])
        offsets.append(torch.full((count,), math.log(int(unchosen[s]) / count)))
    rows = torch.cat([chosen, *drawn])
    row_offsets = torch.cat([torch.zeros(len(chosen)), *offsets])
    order = rows.argsort(stable=True)
    row_offsets = row_offsets[order]
    return Selection(
        rows[order].to(device),
        row_offsets.to(device) if bool(row_offsets.any()) else None,
    )


def _split(total: int, available: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``total`` draws over buckets in proportion to ``available * weight``, none above
    ``available`` (the excess of a full bucket goes to the others); [S] int64."""
    draws = torch.zeros_like(available)
    remaining = min(total, int(available.sum()))
    while remaining > 0:
        room = available - draws
        share = (room > 0).double() * available.double() * weight
        exact = remaining * share / share.sum()
        more = torch.minimum(exact.floor().long(), room)
        leftover = remaining - int(more.sum())
        if leftover > 0:  # largest remainders, one each
            fraction = torch.where(room > more, exact - exact.floor(), torch.tensor(-1.0))
            top = fraction.topk(min(leftover, int((room > more).sum()))).indices
            more[top] += 1
        draws += more
        remaining -= int(more.sum())
    return draws
