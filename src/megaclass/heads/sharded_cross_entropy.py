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
    the sampled-softmax correction (see ``megaclass.samplers.Selection``).

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
        target_rows = torch.where(owned, local, torch.full_like(local, -1))
        targets = shard_targets(queries, scored, target_rows, spec.margin)
        shard_lse = shard_logsumexp(
            queries,
            scored,
            targets,
            normalize=spec.margin.normalize,
            chunk_size=spec.chunk_size,
            matmul_dtype=spec.matmul_dtype,
            offsets=spec.logit_offsets,
        )
        lse, target_logits = logsumexp_across(
            shard_lse.row_max, shard_lse.sum_exp, targets.logits, spec.group
        )
        num_valid = valid.sum().clamp_min(1)
        row_loss = torch.where(valid, lse - target_logits, torch.zeros_like(lse))  # [B]
        ctx.save_for_backward(queries, scored, valid, lse)
        ctx.weight_shape = weight.shape
        ctx.targets, ctx.shard_lse, ctx.num_valid, ctx.spec = targets, shard_lse, num_valid, spec
        return row_loss.sum() / num_valid

    @staticmethod
    def backward(ctx, grad_loss):
        queries, scored, valid, lse = ctx.saved_tensors
        spec = ctx.spec
        if ctx.shard_lse is None:
            raise RuntimeError(
                "the sampled softmax keeps its logits for one backward pass and overwrites them "
                "there; a second backward through the same forward (retain_graph) needs a new "
                "forward pass"
            )
        row_grad = valid.float() * (grad_loss / ctx.num_valid)  # [B]
        grad_queries, grad_scored = shard_softmax_backward(
            queries,
            scored,
            ctx.targets,
            lse,
            row_grad,
            ctx.shard_lse,
            normalize=spec.margin.normalize,
            chunk_size=spec.chunk_size,
            matmul_dtype=spec.matmul_dtype,
            offsets=spec.logit_offsets,
        )
        if ctx.shard_lse.kept_exp is not None:
            ctx.shard_lse = None  # consumed
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
        return grad_queries.to(queries.dtype), grad_weight, None, None
