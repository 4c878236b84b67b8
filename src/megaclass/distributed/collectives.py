"""Collectives for the class-sharded head, with their communication contract.

Every function takes the process group explicitly; ``group=None`` means "one process, no
torch.distributed set-up": the function then does no communication at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(this process's rank in ``group``, the group's size); (0, 1) for ``group=None``."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_ints(values: list[int], group: dist.ProcessGroup | None) -> list[list[int]]:
    """Every rank's ``values`` (same length on all ranks), in rank order.

    Collective: one ``all_gather_single`` of ``len(values)`` int64 on ``group``.
    """
    local = torch.tensor(values, dtype=torch.int64)
    if group is None:
        return [local.tolist()]
    _, world_size = rank_and_size(group)
    device = _device_of(group)
    gathered = torch.empty(world_size * len(values), dtype=torch.int64, device=device)
    dist.all_gather_single(gathered, local.to(device), group=group)
    return gathered.view(world_size, len(values)).tolist()


def exchange_rows(
    chunks: list[torch.Tensor], group: dist.ProcessGroup | None
) -> list[torch.Tensor]:
    """All-to-all of rows: ``chunks[r]`` [n_r, ...] goes to rank r; returns what every rank sent
    here, in rank order (all chunks of all ranks share dtype and trailing shape; not
    differentiable).

    Collectives on ``group``: one ``all_to_all_single`` of the row counts (int64 [world]), then
    one of the rows themselves (uneven splits).
    """
    if group is None:
        return list(chunks)
    _, world_size = rank_and_size(group)
    if len(chunks) != world_size:
        raise ValueError(f"need one chunk per rank ({world_size}), got {len(chunks)}")
    device = _device_of(group)
    sent = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.int64, device=device)
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent, group=group)
    row_shape = chunks[0].shape[1:]
    width = row_shape.numel()
    flat = torch.cat([chunk.reshape(-1) for chunk in chunks]).to(device)
    out = torch.empty(int(received.sum()) * width, dtype=flat.dtype, device=device)
    dist.all_to_all_single(
        out,
        flat,
        output_split_sizes=(received * width).tolist(),
        input_split_sizes=(sent * width).tolist(),
        group=group,
    )
    pieces = out.to(chunks[0].device).split((received * width).tolist())
    return [piece.view(-1, *row_shape) for piece in pieces]


def gather_rows(
    tensor: torch.Tensor,
    sizes: list[int],
    group: dist.ProcessGroup | None,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Concatenate every rank's rows in rank order: ``[sizes[r], ...]`` on rank r -> ``[sum, ...]``.

    ``sizes`` is the row count of every rank (ranks may differ). Differentiable: the gradient of
    this rank's rows is the sum over ranks of the gradients of those rows, times ``grad_scale``.

    Collectives on ``group``: forward one ``all_gather_single`` of ``max(sizes)`` rows per rank
    (rows padded to equal size); backward one ``reduce_scatter_single`` (SUM) of the same size.
    """
    if group is None:
        return tensor if grad_scale == 1.0 else _ScaleGrad.apply(tensor, grad_scale)
    return _GatherRows.apply(tensor, sizes, group, grad_scale)


def logsumexp_across(
    row_max: torch.Tensor,
    sum_exp: torch.Tensor,
    extra: torch.Tensor,
    group: dist.ProcessGroup | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-shard log-sum-exp statistics into the global one, in log space.

    row_max [B], sum_exp [B]: this shard's ``lse_shard = row_max + log(sum_exp)``; extra [B] is
    summed over ranks in the same round trip. Returns (global lse [B], summed extra [B]).

    Collectives on ``group``: one ``all_reduce`` (MAX) of [B], then one ``all_reduce`` (SUM) of
    [2, B]. Nothing is clamped: a shard far below the maximum contributes ``exp(-large) = 0``.
    """
    global_max = row_max.clone()
    if group is not None:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    rescaled = torch.where(
        sum_exp > 0, sum_exp * (row_max - global_max).exp(), torch.zeros_like(sum_exp)
    )
    sums = torch.stack([rescaled, extra])  # [2, B]
    if group is not None:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return global_max + sums[0].log(), sums[1]


def _device_of(group: dist.ProcessGroup) -> torch.device:
    """NCCL groups communicate CUDA tensors; every other backend CPU tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, grad_scale):
        ctx.grad_scale = grad_scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.grad_scale, None


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, sizes, group, grad_scale):
        rank, world_size = rank_and_size(group)
        max_rows = max(sizes)
        ctx.sizes, ctx.group, ctx.grad_scale, ctx.rank = sizes, group, grad_scale, rank
        if max_rows == 0:
            return tensor.new_empty((0, *tensor.shape[1:]))
        padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = tensor.new_empty((world_size * max_rows, *tensor.shape[1:]))
        dist.all_gather_single(gathered, padded, group=group)
        pieces = gathered.split(max_rows)
        return torch.cat([piece[:n] for piece, n in zip(pieces, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad):
        own = _sum_scattered_rows(grad, ctx.sizes, ctx.group)
        if ctx.grad_scale != 1.0:
            own = own * ctx.grad_scale
        return own, None, None, None


def _sum_scattered_rows(
    rows: torch.Tensor, sizes: list[int], group: dist.ProcessGroup
) -> torch.Tensor:
    """rows [sum(sizes), ...], every rank's pieces in rank order -> this rank's piece
    [sizes[rank], ...] summed over the ranks. One ``reduce_scatter_single`` (SUM) of
    ``max(sizes)`` rows per rank."""
    rank, _ = rank_and_size(group)
    max_rows = max(sizes)
    if max_rows == 0:
        return rows.new_empty((0, *rows.shape[1:]))
    padded = rows.new_zeros((len(sizes) * max_rows, *rows.shape[1:]))
    for r, piece in enumerate(rows.split(sizes)):
        padded[r * max_rows : r * max_rows + sizes[r]] = piece
    own = rows.new_empty((max_rows, *rows.shape[1:]))
    dist.reduce_scatter_single(own, padded, op=dist.ReduceOp.SUM, group=group)
    return own[: sizes[rank]]


def lookup_rows(
    weight: torch.Tensor,
    ids: torch.Tensor,
    row_start: int,
    group: dist.ProcessGroup | None,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Rows of a row-sharded table by global id: this rank holds rows ``row_start ..
    row_start + len(weight)``; ids [n] may name rows of any rank -> [n, D].

    Differentiable in ``weight``: its gradient (the sum over ranks of the gradients of the rows
    looked up, times ``grad_scale``) is row-sparse, a sparse COO tensor over the rows this rank
    owns that some rank looked up, never a dense [len(weight), D] tensor.

    Collectives on ``group``: forward one ``all_gather_single`` of 1 int64, one of the ids
    (padded to the largest count) and one ``reduce_scatter_single`` (SUM) of the rows; backward
    one ``all_gather_single`` of the rows' gradient.
    """
    if group is None:
        return F.embedding(ids - row_start, weight, sparse=True)
    return _LookupRows.apply(weight, ids, row_start, group, grad_scale)


class _LookupRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, row_start, group, grad_scale):
        sizes = [n for (n,) in all_gather_ints([len(ids)], group)]
        local = gather_rows(ids, sizes, group) - row_start  # [sum(sizes)] all ranks' ids
        owned = (local >= 0) & (local < len(weight))
        rows = weight.new_zeros((len(local), weight.shape[1]))  # [sum(sizes), D]
        rows[owned] = weight[local[owned]]
        ctx.save_for_backward(local[owned], owned)
        ctx.sizes, ctx.group, ctx.weight_shape = sizes, group, weight.shape
        ctx.grad_scale = grad_scale
        return _sum_scattered_rows(rows, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        rows, owned = ctx.saved_tensors
        all_grads = gather_rows(grad.contiguous(), ctx.sizes, ctx.group)  # [sum(sizes), D]
        grad_weight = torch.sparse_coo_tensor(  # rows repeat: the optimizer coalesces
            rows[None], all_grads[owned] * ctx.grad_scale, ctx.weight_shape, check_invariants=False
        )
        return grad_weight, None, None, None, None
