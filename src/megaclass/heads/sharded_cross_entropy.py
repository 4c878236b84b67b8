"""The class-sharded softmax cross entropy as one autograd function.

Each rank holds the weights of a contiguous range of classes and the queries of the whole global
batch. The loss is the mean over the global batch (ignored rows left out) of
``lse_i - target_logit_i``; the log-sum-exp is combined across ranks in log space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megaclass.distributed import logsumexp_across
from megaclass.functional import shard_logsumexp, shard_softmax_backward, shard_targets
from megaclass.functional.margins import Margin
from megaclass.samplers.selection import SampleGroups


@dataclass(frozen=True)
class ShardSpec:
    """What the function needs besides tensors: the shard, the margin and how to compute."""

    class_start: int
    margin: Margin
    group: dist.ProcessGroup | None
    ignore_index: int
    chunk_size: int | None
    matmul_dtype: torch.dtype
    active_rows: torch.Tensor | None = None  # sorted rows of ``weight`` scored; None: all
    logit_offsets: torch.Tensor | None = None  # [A] fp32 added to the active rows' logits
    groups: SampleGroups | None = None  # with active rows: each group's columns (and offsets)
    row_grad_scale: torch.Tensor | None = None  # [A] fp32 factors of the active rows' gradients


def sharded_cross_entropy(
    queries: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, spec: ShardSpec
) -> torch.Tensor:
    """Mean softmax cross entropy of the global batch over all shards' classes.

    queries [B, D] fp32: the global batch (for cosine margins ``scale * x / |x|``);
    weight [C_local, D]: this rank's classes ``[class_start, class_start + C_local)``;
    labels [B] int64: global class ids, ``ignore_index`` for rows that do not count.
    Returns a scalar, identical on every rank. Its backward gives this rank's share of the
    gradient of the queries (to be summed over ranks) and the gradient of its weights.

    With ``spec.active_rows`` only those rows of ``weight`` are scored (they must include every
    label of the batch that this shard owns) and the weight gradient is a sparse COO tensor
    holding only those rows: no dense [C_local, D] gradient is formed. ``spec.logit_offsets``
    (with active rows) is added to the logits of each active row, its target logits excepted:
    the sampled-softmax correction (see ``megaclass.samplers.Selection``). With ``spec.groups``
    each group of samples is scored over its own columns of the active rows only (its softmax
    runs over those, on every shard), with the groups' own offsets. ``spec.row_grad_scale`` (with
    active rows) multiplies each active row's weight gradient (see ``ClassifierHead``).

    Collectives on ``spec.group`` (forward only): those of ``logsumexp_across``, i.e. one
    all_reduce MAX of [B] and one all_reduce SUM of [2, B]. The backward pass communicates nothing.
    """
    return _ShardedCrossEntropy.apply(queries, weight, labels, spec)


class _ShardedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, weight, labels, spec: ShardSpec):
        valid = labels != spec.ignore_index  # [B]
        local = labels - spec.class_start
        owned = valid & (local >= 0) & (local < weight.shape[0])
        scored = weight
        if spec.active_rows is not None:
            scored = weight.index_select(0, spec.active_rows)  # [A, D]
            local = torch.searchsorted(spec.active_rows, local.clamp(0, weight.shape[0] - 1))
        target_rows = torch.where(owned, local, torch.full_like(local, -1))  # [B] rows of scored
        row_max, sum_exp, target_logits = (
            torch.empty(len(labels), device=queries.device) for _ in range(3)
        )
        blocks = []
        for members, columns, offsets in _groups(spec):
            block = _Block(queries, scored, target_rows, members, columns, offsets, spec)
            block.forward()
            row_max[members], sum_exp[members] = block.lse.row_max, block.lse.sum_exp
            target_logits[members] = block.targets.logits
            blocks.append(block)
        lse, target_logits = logsumexp_across(row_max, sum_exp, target_logits, spec.group)
        num_valid = valid.sum().clamp_min(1)
        row_loss = torch.where(valid, lse - target_logits, torch.zeros_like(lse))  # [B]
        ctx.save_for_backward(valid, lse)
        ctx.scored_shape, ctx.weight_shape = scored.shape, weight.shape
        ctx.queries_shape, ctx.queries_dtype = queries.shape, queries.dtype
        ctx.blocks, ctx.num_valid, ctx.spec = blocks, num_valid, spec
        return row_loss.sum() / num_valid

    @staticmethod
    def backward(ctx, grad_loss):
        valid, lse = ctx.saved_tensors
        spec = ctx.spec
        if ctx.blocks is None:
            raise RuntimeError(
                "the sampled softmax keeps its logits for one backward pass and overwrites them "
                "there; a second backward through the same forward (retain_graph) needs a new "
                "forward pass"
            )
        row_grad = valid.float() * (grad_loss / ctx.num_valid)  # [B]
        grad_queries = torch.zeros(ctx.queries_shape, device=lse.device)
        grad_scored = None
        for block in ctx.blocks:
            block_queries, block_scored = block.backward(lse, row_grad)
            grad_queries[block.members] += block_queries
            if block.columns is None:
                grad_scored = block_scored
            else:
                if grad_scored is None:
                    grad_scored = block_scored.new_zeros(ctx.scored_shape)
                grad_scored.index_add_(0, block.columns, block_scored)
        if any(block.lse.kept_exp is not None for block in ctx.blocks):
            ctx.blocks = None  # consumed
        if spec.row_grad_scale is not None:
            grad_scored.mul_(spec.row_grad_scale[:, None].to(grad_scored.dtype))
        if spec.active_rows is None:
            grad_weight = grad_scored
        else:
            grad_weight = torch.sparse_coo_tensor(
                spec.active_rows[None],
                grad_scored,
                ctx.weight_shape,
                is_coalesced=True,
                check_invariants=False,
            )
        return grad_queries.to(ctx.queries_dtype), grad_weight, None, None


def _groups(spec: ShardSpec):
    """(members, columns, logit offsets of the columns) of each group; one group of every row
    and column (with ``spec.logit_offsets``) without groups."""
    groups = spec.groups
    if groups is None:
        yield slice(None), None, spec.logit_offsets
        return
    offsets = groups.logit_offsets or (None,) * len(groups.members)
    yield from zip(groups.members, groups.columns, offsets, strict=True)


class _Block:
    """One group of samples (queries[members]) and the active rows it is scored over
    (scored[columns]; all of them when columns is None), with offsets [a] added to their logits
    (or None)."""

    def __init__(self, queries, scored, target_rows, members, columns, offsets, spec: ShardSpec):
        self.members, self.columns, self.offsets, self.spec = members, columns, offsets, spec
        self.queries = queries[members]  # [b, D]
        target_rows = target_rows[members]
        if columns is None:
            self.scored = scored
        else:
            self.scored = scored.index_select(0, columns)  # [a, D]
            owned = target_rows >= 0
            position = torch.searchsorted(columns, target_rows).clamp_max(len(columns) - 1)
            if bool(owned.any()) and bool((columns[position] != target_rows)[owned].any()):
                raise RuntimeError("a group's columns miss one of its samples' labels")
            target_rows = torch.where(owned, position, target_rows)
        self.targets = shard_targets(self.queries, self.scored, target_rows, spec.margin)

    def forward(self) -> None:
        spec = self.spec
        self.lse = shard_logsumexp(
            self.queries,
            self.scored,
            self.targets,
            normalize=spec.margin.normalize,
            chunk_size=spec.chunk_size,
            matmul_dtype=spec.matmul_dtype,
            offsets=self.offsets,
        )

    def backward(self, lse: torch.Tensor, row_grad: torch.Tensor):
        """-> (grad of this block's queries [b, D], grad of its scored rows [a, D])."""
        spec = self.spec
        return shard_softmax_backward(
            self.queries,
            self.scored,
            self.targets,
            lse[self.members],
            row_grad[self.members],
            self.lse,
            normalize=spec.margin.normalize,
            chunk_size=spec.chunk_size,
            matmul_dtype=spec.matmul_dtype,
            offsets=self.offsets,
        )
