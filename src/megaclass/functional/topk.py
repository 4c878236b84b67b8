"""Exact row-wise top-k of wide score matrices, faster than ``torch.topk`` on CPU.

``torch.topk`` over a [B, c] block runs an order of magnitude slower per element on a CPU core
than a row maximum: in class-graph builds and in evaluation over 10^6 classes it was most of the
time (measurements in ``docs/benchmarks.md``, "Kernels"; the gain shrinks as k grows, since the
gathered candidates grow with k).

Here the columns are split into groups of ``_GROUP``; the k best scores of a row lie in
the k groups with the highest maxima (a group holding one of them has a maximum at least the k-th
best score, and at most k groups reach it), so ``torch.topk`` runs on the group maxima
[B, c / _GROUP] and then on the k gathered groups [B, k * _GROUP] only. Ties may pick other
columns of equal score than ``torch.topk`` would.

Streaming a top-k over chunks of columns (``merge_row_topk``), a chunk can only contribute
columns that beat the row's running k-th best score, so only the groups whose maximum does are
gathered: after the first chunks that is a handful per row, and a chunk costs little more than
its row maxima (``shard_topk``; measured in ``docs/benchmarks.md``, "Kernels").
"""

from __future__ import annotations

import torch

_GROUP = 16
_MIN_GROUPS_PER_K = 8  # below this many groups per wanted column, plain topk is as fast


def row_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores of each row, largest first, and their columns.

    scores [B, c] -> (values [B, k], columns [B, k] int64); k <= c. Same contract as
    ``scores.topk(k, dim=1)``.
    """
    width = scores.shape[1]
    grouped_width = width - width % _GROUP
    if grouped_width < _MIN_GROUPS_PER_K * k * _GROUP:
        return scores.topk(k, dim=1)
    values, columns = _grouped_topk(scores[:, :grouped_width], k)
    if grouped_width == width:
        return values, columns
    tail_values, tail_columns = scores[:, grouped_width:].topk(min(k, width - grouped_width), dim=1)
    values, picked = torch.cat([values, tail_values], dim=1).topk(k, dim=1)
    return values, torch.cat([columns, tail_columns + grouped_width], dim=1).gather(1, picked)


def _grouped_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``row_topk`` of [B, c] with c a multiple of ``_GROUP``. Group m holds the columns m,
    m + M, m + 2M, ... (M = c / _GROUP): the maximum over the middle dimension of [B, _GROUP, M]
    is vectorised along M, the contiguous one."""
    num_rows, width = scores.shape
    span = width // _GROUP
    group_max = scores.view(num_rows, _GROUP, span).amax(1)  # [B, M]
    best_groups = group_max.topk(k, dim=1).indices  # [B, k]
    offsets = torch.arange(0, width, span, device=scores.device)  # [G]
    columns = (best_groups[:, None, :] + offsets[None, :, None]).flatten(1)  # [B, G*k]
    values, picked = scores.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, picked)


def merge_row_topk(
    best_values: torch.Tensor, best_columns: torch.Tensor, scores: torch.Tensor, first: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row among a running top-k and a new chunk of scores.

    best_values, best_columns [B, j] (j <= k, largest first): the running top-k and its columns;
    scores [B, c]: the chunk, whose column 0 is column ``first``. Returns ([B, k'], [B, k'])
    largest first, k' = min(k, j + c). When the running top-k is full, only the groups of the
    chunk whose maximum beats a row's k-th best are gathered.
    """
    num_rows, width = scores.shape
    grouped_width = width - width % _GROUP
    if best_values.shape[1] < k or grouped_width == 0:
        values, columns = row_topk(scores, min(k, width))
        return _merged(best_values, best_columns, values, columns + first, k)
    span = grouped_width // _GROUP
    group_max = scores[:, :grouped_width].view(num_rows, _GROUP, span).amax(1)  # [B, M]
    needed = int((group_max > best_values[:, k - 1 : k]).sum(1).max())
    offsets = torch.arange(0, grouped_width, span, device=scores.device)  # [G]
    groups = group_max.topk(needed, dim=1).indices  # [B, needed]
    columns = (groups[:, None, :] + offsets[None, :, None]).flatten(1)  # [B, G * needed]
    tail = torch.arange(grouped_width, width, device=scores.device).expand(num_rows, -1)
    columns = torch.cat([columns, tail], dim=1)
    return _merged(best_values, best_columns, scores.gather(1, columns), columns + first, k)


def _merged(values_a, columns_a, values_b, columns_b, k: int):
    """The k largest of two [B, *] candidate sets (values, columns), largest first."""
    values = torch.cat([values_a, values_b], dim=1)
    values, picked = values.topk(min(k, values.shape[1]), dim=1)
    return values, torch.cat([columns_a, columns_b], dim=1).gather(1, picked)
