"""Softmax cross entropy over one shard of classes, streamed over chunks of classes.

The loss of row ``i`` is ``lse_i - l_i`` where ``l_i`` is its (penalised) target logit and
``lse_i`` the log-sum-exp of its logits over every class, the target logit substituted. A
sampled softmax may add a fixed offset to the logits of some classes (``offsets``: the log of how
many classes a uniformly drawn class stands for), so that its sum of exponentials estimates the
full one. This module computes, for the classes of one shard (the rows of ``weight``):

- ``shard_logsumexp``: per row, the maximum logit and the sum of ``exp(logit - max)``; shards
  combine these into the global ``lse`` (see ``megaclass.distributed.logsumexp_across``);
- ``shard_softmax_backward``: the gradient of ``sum_i g_i * (lse_i - l_i)`` for the global
  ``lse``, with respect to the queries and to this shard's weights.

Logits are formed ``chunk_size`` classes at a time and recomputed in the backward pass, so memory
is O(batch x chunk) rather than O(batch x classes) (the idea behind Cut Cross-Entropy and Liger's
fused linear cross entropy), at the price of a fourth matrix product. ``chunk_size=None``
forms all logits at once and keeps their exponentials for the backward pass instead: faster,
O(batch x classes) memory.

Internally logits are in base 2 (the queries are scaled by log2(e)) because ``exp2`` runs
several times faster than ``exp`` on CPU; everything returned is in natural units.

Shapes: queries ``[B, D]``, weight ``[C, D]`` (``C`` classes of this shard). For cosine margins
the queries are ``scale * x / |x|`` and every weight row is normalised chunk by chunk, so the raw
logit ``queries . w_hat`` is ``scale * cos``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megaclass.functional import workspace
from megaclass.functional.margins import Margin
from megaclass.functional.topk import merge_row_topk

_NORM_EPS = 1e-12  # as F.normalize
_LOG2E = 1.4426950408889634  # base-2 logit = natural logit * log2(e)
_LN2 = 0.6931471805599453
_EXP2_LIMIT = 120.0  # |base-2 exponent| kept clear of fp32's and bf16's limits (2^-126, 2^128)


@dataclass(frozen=True)
class ShardTargets:
    """Where each row's target class lies in this shard, and its penalised logit.

    rows:   [B] int64, the target's row in ``weight``, -1 where the target is elsewhere (or ignored)
    logits: [B] fp32, the penalised target logit where owned, 0 elsewhere
    slope:  [B] fp32, d(target logit) / d(raw logit) where owned, 0 elsewhere
    """

    rows: torch.Tensor
    logits: torch.Tensor
    slope: torch.Tensor


@dataclass(frozen=True)
class ShardLogSumExp:
    """Per-row log-sum-exp statistics of one shard: ``lse_shard = row_max + log(sum_exp)``.

    row_max: [B] fp32 (``-inf`` for an empty shard); sum_exp: [B] fp32;
    kept_exp: [B, C] ``exp(logit - row_max)`` when computed unchunked, kept for backward (which
    overwrites it: one backward per forward); else None. In the matmul dtype when unshifted,
    else fp32.
    kept_weights: [C, D] with kept_exp, the rows as multiplied (normalised for cosine margins,
    in the matmul dtype), so that backward does not form them again; else None.
    unshifted: whether the exponentials were taken of the logits as they are (row_max is 0).
    """

    row_max: torch.Tensor
    sum_exp: torch.Tensor
    kept_exp: torch.Tensor | None
    kept_weights: torch.Tensor | None = None
    unshifted: bool = False


def shard_targets(
    queries: torch.Tensor, weight: torch.Tensor, target_rows: torch.Tensor, margin: Margin
) -> ShardTargets:
    """Penalised target logits of the rows whose target lies in this shard.

    queries [B, D], weight [C, D], target_rows [B] (row in ``weight`` or -1).
    """
    owned = (target_rows >= 0).nonzero().squeeze(1)  # [n]
    target_w = weight[target_rows[owned]].float()  # [n, D]
    if margin.normalize:
        target_w = F.normalize(target_w, dim=1, eps=_NORM_EPS)
    raw = (queries[owned].float() * target_w).sum(1)  # [n]
    with torch.enable_grad():
        cos = (raw / margin.scale).requires_grad_()
        penalised = margin.target_logit(cos)
        (dlogit_dcos,) = torch.autograd.grad(penalised.sum(), cos)
    logits = torch.zeros(len(target_rows), dtype=torch.float32, device=queries.device)
    slope = torch.zeros_like(logits)
    logits[owned] = penalised.detach()
    slope[owned] = dlogit_dcos / margin.scale
    return ShardTargets(rows=target_rows, logits=logits, slope=slope)


def shard_logsumexp(
    queries: torch.Tensor,
    weight: torch.Tensor,
    targets: ShardTargets,
    *,
    normalize: bool,
    chunk_size: int | None,
    matmul_dtype: torch.dtype,
    offsets: torch.Tensor | None = None,
) -> ShardLogSumExp:
    """Row maxima and sums of exponentials of this shard's logits, targets substituted.

    offsets [C] fp32 or None: added to every logit of its class (column) but the targets. They
    are applied as factors ``2^offset`` of the columns' exponentials, in the row sums, rather
    than added to the logits: one pass less over the [B, C] block.

    When no logit can overflow or underflow ``exp2`` (see ``_exponentiate_unshifted``) the
    exponentials are taken of the logits as they are, ``row_max`` is 0, and the block stays in
    the matmul dtype: no pass for the row maxima, none to subtract them and, in bf16, none to
    convert the block.
    """
    num_rows, num_classes = queries.shape[0], weight.shape[0]
    row_max = torch.full((num_rows,), float("-inf"), device=queries.device)
    sum_exp = torch.zeros(num_rows, device=queries.device)
    queries_mm = (queries * _LOG2E).to(matmul_dtype)  # base-2 logits
    targets_base2 = targets.logits * _LOG2E
    column_scale = _column_scale(offsets)
    unshifted = _exponentiate_unshifted(queries, weight, targets, normalize, column_scale)
    step = _step(num_classes, chunk_size)
    buffer = _logits_buffer(
        num_rows, min(step, num_classes), queries.device, matmul_dtype, unshifted
    )
    for start, stop in _chunks(num_classes, step):
        exps = buffer[:, : stop - start]  # [B, c]: base-2 logits, then exp2(logit - chunk_max)
        w_mm = _chunk_logits(queries_mm, weight[start:stop], normalize, out=exps)
        rows, cols = _owned_in_chunk(targets, start, stop)
        if unshifted:
            chunk_max = torch.zeros(num_rows, device=queries.device)
        else:
            chunk_max = exps.amax(1)  # [B] (fp32), raised to bound the offset logits and targets
            if offsets is not None:
                chunk_max += offsets[start:stop].max() * _LOG2E
            chunk_max[rows] = torch.maximum(chunk_max[rows], targets_base2[rows])
            exps.sub_(chunk_max[:, None])
        exps.exp2_()
        target_exps = (targets_base2[rows] - chunk_max[rows]).exp2()  # [n], no offset
        if column_scale is None:
            exps[rows, cols] = target_exps.to(exps.dtype)
            chunk_sum = exps.sum(1).float()  # [B]
        else:
            scale = column_scale[start:stop]
            exps[rows, cols] = (target_exps / scale[cols]).to(exps.dtype)
            chunk_sum = (exps @ scale.to(exps.dtype)).float()  # [B]
        new_max = torch.maximum(row_max, chunk_max)
        sum_exp = sum_exp * (row_max - new_max).exp2() + chunk_sum * (chunk_max - new_max).exp2()
        row_max = new_max
    kept = chunk_size is None and num_classes > 0  # one chunk: kept for backward
    return ShardLogSumExp(
        row_max * _LN2,
        sum_exp,
        kept_exp=buffer if kept else None,
        kept_weights=w_mm if kept else None,
        unshifted=unshifted,
    )


def shard_softmax_backward(
    queries: torch.Tensor,
    weight: torch.Tensor,
    targets: ShardTargets,
    lse: torch.Tensor,
    row_grad: torch.Tensor,
    shard_lse: ShardLogSumExp,
    *,
    normalize: bool,
    chunk_size: int | None,
    matmul_dtype: torch.dtype,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``sum_i row_grad_i * (lse_i - target_logit_i)`` restricted to this shard.

    lse [B] is the global log-sum-exp; row_grad [B] the weight of each row's loss (0 for ignored
    rows); offsets as given to ``shard_logsumexp``. Returns (grad_queries [B, D] fp32, this
    shard's contribution; grad_weight [C, D]).

    The gradient of the logits is ``row_scale_i * exps_ij * column_scale_j`` but at the targets;
    the row and column factors are applied to the [B, D] and [c, D] operands and results of
    the matrix products rather than to the [B, c] block, and the target columns (d/d raw logit
    ``(p_t - 1) * row_grad * slope``) are zeroed in the block and added apart, in fp32.
    """
    num_rows, num_classes = queries.shape[0], weight.shape[0]
    grad_queries = torch.zeros(queries.shape, dtype=torch.float32, device=queries.device)
    # Base-2 logits: queries and lse scaled by log2(e). The row weights are scaled by ln(2), so
    # that block^T @ queries_base2 is the gradient of the weights as it stands; the gradient of
    # the queries takes the factor log2(e) at the end.
    queries_base2 = queries.float() * _LOG2E
    queries_mm = queries_base2.to(matmul_dtype)
    lse_base2, targets_base2 = lse * _LOG2E, targets.logits * _LOG2E
    row_grad = row_grad * _LN2
    column_scale = _column_scale(offsets)
    step = _step(num_classes, chunk_size)
    one_chunk = step >= num_classes
    grad_weight = None if one_chunk else torch.empty_like(weight)  # one chunk: that chunk's
    recompute, unshifted = shard_lse.kept_exp is None, shard_lse.unshifted
    if recompute:
        width = min(step, num_classes)
        buffer = _logits_buffer(num_rows, width, queries.device, matmul_dtype, unshifted)
    else:
        buffer = shard_lse.kept_exp  # overwritten in place: backward is its last use
    if recompute and not unshifted:
        row_scale = row_grad  # [B]: the recomputed exponentials are exp2(logit - lse)
    else:  # the exponentials are exp2(logit - row_max)
        row_scale = (shard_lse.row_max - lse).exp() * row_grad
    scaled_queries = (queries_base2 * row_scale[:, None]).to(matmul_dtype)  # [B, D]
    for start, stop in _chunks(num_classes, step):
        exps = buffer[:, : stop - start]  # [B, c]
        if recompute:
            w_mm = _chunk_logits(queries_mm, weight[start:stop], normalize, out=exps)
            if not unshifted:
                exps.sub_(lse_base2[:, None])
            exps.exp2_()
        else:
            w_mm = shard_lse.kept_weights
        rows, cols = _owned_in_chunk(targets, start, stop)
        exps[rows, cols] = 0  # added apart below
        exps_mm = _in_matmul_dtype(exps, matmul_dtype)
        scale = None if column_scale is None else column_scale[start:stop, None]  # [c, 1]
        if scale is not None:
            w_mm = w_mm * scale.to(matmul_dtype)
        grad_queries.add_((exps_mm @ w_mm).float().mul_(row_scale[:, None]))
        grad_w_hat = (exps_mm.t() @ scaled_queries).float()  # [c, D]
        if scale is not None:
            grad_w_hat.mul_(scale)
        p_target = (targets_base2[rows] - lse_base2[rows]).exp2()  # [n]
        target_grad = ((p_target - 1) * row_grad[rows] * targets.slope[rows])[:, None]  # [n, 1]
        target_w_hat = _normalized(weight[start:stop][cols].float(), normalize)  # [n, D]
        grad_queries.index_add_(0, rows, target_grad * target_w_hat)
        grad_w_hat.index_add_(0, cols, target_grad * queries_base2[rows])
        if normalize:
            grad_w_hat = _normalize_backward(grad_w_hat, weight[start:stop])
        if one_chunk:
            grad_weight = grad_w_hat.to(weight.dtype)
        else:
            grad_weight[start:stop] = grad_w_hat
    if grad_weight is None:  # no classes
        grad_weight = torch.empty_like(weight)
    return grad_queries.mul_(_LOG2E), grad_weight


def _column_scale(offsets: torch.Tensor | None) -> torch.Tensor | None:
    """[C] fp32 ``2^offset`` (in base-2 units: ``e^offset``) of each column, or None."""
    return None if offsets is None else offsets.float().exp()


def _step(num_classes: int, chunk_size: int | None) -> int:
    return max(num_classes if chunk_size is None else chunk_size, 1)


def _chunks(num_classes: int, step: int):
    for start in range(0, num_classes, step):
        yield start, min(start + step, num_classes)


def _normalized(w: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(w.float(), dim=1, eps=_NORM_EPS) if normalize else w


def _chunk_logits(
    queries_mm: torch.Tensor, w_chunk: torch.Tensor, normalize: bool, *, out: torch.Tensor
) -> torch.Tensor:
    """Raw logits ``queries . w_hat`` of one chunk into ``out`` [B, c]; returns w_hat [c, D] in
    the dtype of ``queries_mm``."""
    w_hat = _normalized(w_chunk, normalize)
    w_mm = w_hat.to(queries_mm.dtype)
    if out.dtype == queries_mm.dtype:
        torch.mm(queries_mm, w_mm.t(), out=out)
    else:
        products = workspace.take("products", out.shape, queries_mm.dtype, out.device)
        out.copy_(torch.mm(queries_mm, w_mm.t(), out=products))
    return w_mm


def _logits_buffer(
    num_rows: int,
    width: int,
    device: torch.device,
    matmul_dtype: torch.dtype = torch.float32,
    unshifted: bool = False,
) -> torch.Tensor:
    """Scratch [num_rows, width] for a chunk of logits (reused across steps): in the matmul
    dtype when the exponentials are taken unshifted, else fp32 (the shift is subtracted there)."""
    dtype = matmul_dtype if unshifted else torch.float32
    return workspace.take("logits", (num_rows, width), dtype, device)


def _exponentiate_unshifted(
    queries: torch.Tensor,
    weight: torch.Tensor,
    targets: ShardTargets,
    normalize: bool,
    column_scale: torch.Tensor | None,
) -> bool:
    """Whether ``exp2`` of every base-2 logit as it is, and every row sum of those exponentials
    (column factors included), stays within the normal range of fp32 and bf16 (2^-126 to
    2^128), so that no shift by the row maximum is needed.

    Cauchy-Schwarz bounds every raw logit by ``|q_i| * |w_j|`` (``|w_hat_j| <= 1`` for cosine
    margins): with a cosine margin of scale 32 that is 46 in base 2, so a row sum of 10^8
    exponentials stays below 2^73. A margin's target logit is bounded by its own value.
    """
    if queries.numel() == 0 or weight.numel() == 0:
        return False
    weight_norm = 1.0 if normalize else weight.float().norm(dim=1).max()
    raw_bound = queries.norm(dim=1).max() * weight_norm
    bound = float(torch.maximum(raw_bound, targets.logits.abs().max())) * _LOG2E
    largest_sum = bound + math.log2(weight.shape[0])
    if column_scale is not None:
        largest_sum += float(column_scale.max().log2())
    return bound < _EXP2_LIMIT and largest_sum < _EXP2_LIMIT


def _in_matmul_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` [B, c] in ``dtype`` for a matrix product, converted into reused scratch."""
    if values.dtype == dtype:
        return values
    return workspace.take("products", values.shape, dtype, values.device).copy_(values)


def _owned_in_chunk(targets: ShardTargets, start: int, stop: int):
    rows = ((targets.rows >= start) & (targets.rows < stop)).nonzero().squeeze(1)  # [n]
    return rows, targets.rows[rows] - start


def _normalize_backward(grad_w_hat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Gradient through ``w_hat = w / max(|w|, eps)`` row by row, in place of ``grad_w_hat``:
    ``g / |w| - w (w . g) / |w|^3`` (0 radial part where ``|w| <= eps``); [c, D] -> [c, D]."""
    w = w.float()
    norm = w.norm(dim=1, keepdim=True)  # [c, 1]
    inverse = norm.clamp_min(_NORM_EPS).reciprocal()
    radial = (w * grad_w_hat).sum(1, keepdim=True) * inverse.pow(3) * (norm > _NORM_EPS)
    return grad_w_hat.mul_(inverse).addcmul_(w, radial, value=-1)


def shard_topk(
    queries: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    normalize: bool,
    chunk_size: int | None,
    matmul_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best-scoring classes of this shard per query, scored chunk by chunk.

    queries [B, D] -> (scores [B, k'] fp32, rows of ``weight`` [B, k'] int64), k' = min(k, C).
    The score is ``queries . w_hat`` (cosine times scale for normalised margins), no margin.
    """
    num_rows, num_classes = queries.shape[0], weight.shape[0]
    best_scores = torch.empty(num_rows, 0, device=queries.device)
    best_rows = torch.empty(num_rows, 0, dtype=torch.int64, device=queries.device)
    queries_mm = queries.to(matmul_dtype)
    step = _step(num_classes, chunk_size)
    buffer = _logits_buffer(num_rows, min(step, num_classes), queries.device)
    for start, stop in _chunks(num_classes, step):
        scores = buffer[:, : stop - start]
        _chunk_logits(queries_mm, weight[start:stop], normalize, out=scores)
        best_scores, best_rows = merge_row_topk(best_scores, best_rows, scores, start, k)
    return best_scores, best_rows
