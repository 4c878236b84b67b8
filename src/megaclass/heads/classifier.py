"""``ClassifierHead``: the class-sharded output layer with a margin and a sampler."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megaclass.distributed import (
    all_gather_ints,
    gather_rows,
    lookup_rows,
    rank_and_size,
    shard_range,
)
from megaclass.functional import shard_topk
from megaclass.functional.margins import Margin, Softmax
from megaclass.heads.sharded_cross_entropy import ShardSpec, sharded_cross_entropy
from megaclass.samplers import Full, Sampler, Selection, Shard

DEFAULT_CHUNK_SIZE = 8192  # classes per chunk of logits: O(batch x 8192) memory
_KEPT_LOGITS_MAX = 1 << 27  # elements (512 MB in fp32) of sampled logits kept for backward
_INIT_STD = 0.01
_INIT_BLOCK = 1 << 16  # rows drawn per seeded block, so a shard's init is independent of world size


@dataclass(frozen=True)
class HeadOutput:
    """loss: scalar mean over the global batch (same on every rank);
    num_active: classes scored this step, summed over all ranks;
    num_samples: rows of the global batch (all ranks)."""

    loss: torch.Tensor
    num_active: int
    num_samples: int


class ClassifierHead(nn.Module):
    """Output layer over ``num_classes`` classes, sharded contiguously over ``process_group``.

    ``head(embeddings, labels)`` takes this rank's batch (embeddings [B_local, D], labels [B_local]
    global class ids; ranks may have different B_local) and returns a ``HeadOutput`` whose loss is
    the mean cross entropy over the global batch.

    What runs on ``process_group`` in ``forward``:
    1. all_gather of 5 int64 per rank (shapes, finiteness) so that every rank validates every
       rank's input and raises the same ``ValueError``: no rank is left waiting in a collective;
    2. all_gather of the embeddings and of the labels (rows padded to the largest local batch);
    3. all_reduce MAX of [B] and all_reduce SUM of [2, B] for the log-sum-exp.
    In backward: one reduce_scatter (SUM) of the gathered embeddings' gradient.

    Training and evaluation: in training mode (``head.train()``, the default) ``forward`` scores
    the classes the sampler selects. In eval mode (``head.eval()``) it computes the exact full
    softmax, every class scored, for an evaluation loss: the sampler is neither asked nor
    updated, whatever it is (its state, graph or index, stays as it was), and ``num_active`` is
    ``num_classes``. Every rank of the group must be in the same mode. ``predict_topk`` scores
    every class in either mode.

    Gradients: ``weight`` gets the exact gradient of the loss. The embeddings get
    ``world_size * d loss / d embeddings``: a data-parallel backbone (DDP) averages its gradients
    over ranks, and the average of these is exactly the gradient of the loss.

    Args:
        margin: ``Softmax()`` (default), ``NormSoftmax``, ``CosFace``, ``ArcFace``,
            ``CombinedMargin``.
        sampler: which classes are scored, a ``megaclass.samplers.Sampler``: ``Full()``
            (default) scores all of them; ``Random``, ``KNN``, ``ANN`` or your own. A sampler
            that keeps a graph or an index needs ``refresh_sampler()`` before the first training
            step and after each optimizer step.
        chunk_size: classes per chunk of logits; logits are recomputed in backward, so memory is
            O(batch x chunk_size). ``None`` forms all logits at once and keeps them for backward.
        matmul_dtype: dtype of the matrix products (``torch.bfloat16`` uses AMX/AVX-512-BF16 or
            tensor cores); the log-sum-exp and all accumulation stay in fp32.
        ignore_index: label of rows that contribute nothing (as in ``F.cross_entropy``).
        check_finite: raise on non-finite embeddings (one pass over them; switch off for speed).
        drawn_rows: the weight gradient of a row the sampler drew (not chosen outright):
            ``"one_step"`` (default) takes this step's push only, for an optimizer with momentum
            (``SparseSGD``), whose velocity would carry a corrected gradient's n/d-times push
            on for many steps; ``"corrected"`` keeps the logit-corrected gradient, for an
            optimizer that scales each row's step by its own gradient history (``RowAdaGrad``).
            Each row optimizer names its own in ``DRAWN_ROWS`` (the trainer sets it); measured
            in ``benchmarks/results/stability.md``.
        seed: the initial weights of a class depend only on ``seed`` and its global id, not on
            the world size.
        initialize: ``False`` leaves the rows unset (``torch.empty``), for a head whose rows are
            loaded right after (``megaclass.inference.load_export``), which would otherwise
            draw every random row only to overwrite it.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: Margin | None = None,
        sampler: Sampler | None = None,
        process_group: dist.ProcessGroup | None = None,
        *,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        matmul_dtype: torch.dtype = torch.float32,
        ignore_index: int = -100,
        check_finite: bool = True,
        drawn_rows: str = "one_step",
        seed: int = 0,
        initialize: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if matmul_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"matmul_dtype must be float32, bfloat16 or float16, got {matmul_dtype}"
            )
        _check_margin(margin)
        if drawn_rows not in DRAWN_ROWS:
            raise ValueError(f"drawn_rows must be one of {DRAWN_ROWS}, got {drawn_rows!r}")
        sampler = Full() if sampler is None else sampler
        if not isinstance(sampler, Sampler):
            raise ValueError(
                f"sampler {sampler!r} is not a megaclass.samplers.Sampler; available: Full(), "
                "Random(rate), KNN(...), ANN(...), or a subclass of Sampler"
            )
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.margin = Softmax() if margin is None else margin
        self.sampler = sampler
        self.process_group = process_group
        self.chunk_size = chunk_size
        self.matmul_dtype = matmul_dtype
        self.ignore_index = ignore_index
        self.check_finite = check_finite
        self.drawn_rows = drawn_rows
        self.seed = seed
        self.rank, self.world_size = rank_and_size(process_group)
        self.class_range = shard_range(num_classes, self.world_size, self.rank)
        start, stop = self.class_range
        rows = (
            _initial_rows(start, stop, embedding_dim, seed).to(device=device, dtype=dtype)
            if initialize
            else torch.empty(stop - start, embedding_dim, device=device, dtype=dtype)
        )
        self.weight = nn.Parameter(rows)  # [num_local, D]
        sampler.bind(
            Shard(
                num_classes,
                self.class_range,
                process_group,
                self.rank,
                self.world_size,
                self.weight.device,
                seed,
                self.margin.normalize,
                chunk_size,
                matmul_dtype,
            )
        )

    @property
    def num_local(self) -> int:
        return self.class_range[1] - self.class_range[0]

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"class_range={self.class_range}, margin={self.margin}, sampler={self.sampler}, "
            f"chunk_size={self.chunk_size}, matmul_dtype={self.matmul_dtype}"
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """embeddings [B_local, D], labels [B_local] global ids -> HeadOutput. In eval mode
        every class is scored and the sampler is not asked (see the class docstring)."""
        sizes = self._validated_batch_sizes(embeddings, labels)
        all_labels = gather_rows(labels, sizes, self.process_group)  # [B]
        self._check_labels(all_labels, sizes)
        queries = gather_rows(  # [B, D]
            embeddings, sizes, self.process_group, grad_scale=float(self.world_size)
        ).float()
        if self.margin.normalize:
            queries = F.normalize(queries, dim=1) * self.margin.scale
        if self.training:
            selection, num_active = self._active_rows(all_labels, queries)
        else:  # the exact full softmax; the sampler is neither asked nor updated
            selection, num_active = None, self.num_classes
        active_rows = None if selection is None else selection.rows
        spec = ShardSpec(
            class_start=self.class_range[0],
            margin=self.margin,
            group=self.process_group,
            ignore_index=self.ignore_index,
            chunk_size=self._chunk_size_for(len(queries), active_rows),
            matmul_dtype=self.matmul_dtype,
            active_rows=active_rows,
            logit_offsets=None if selection is None else selection.logit_offsets,
            groups=None if selection is None else selection.groups,
            row_grad_scale=_drawn_rows_step(selection) if self.drawn_rows == "one_step" else None,
        )
        loss = sharded_cross_entropy(queries, self.weight, all_labels, spec)
        return HeadOutput(loss=loss, num_active=num_active, num_samples=sum(sizes))

    def _chunk_size_for(self, batch: int, active_rows: torch.Tensor | None) -> int | None:
        """A sampled step keeps its logits for backward when they are small enough (no recompute:
        3 matrix products instead of 4); the full softmax always streams in chunks."""
        if active_rows is not None and batch * len(active_rows) <= _KEPT_LOGITS_MAX:
            return None
        return self.chunk_size

    def _active_rows(
        self, all_labels: torch.Tensor, queries: torch.Tensor
    ) -> tuple[Selection | None, int]:
        """This shard's sampled rows (None: all) and the number of active classes of all ranks.

        Collective on ``process_group`` when sampling: one all_reduce (SUM) of a scalar, besides
        the sampler's own (see its ``select``).
        """
        start, stop = self.class_range
        owned = (all_labels >= start) & (all_labels < stop) & (all_labels != self.ignore_index)
        labels = torch.where(owned, all_labels - start, -1)  # [B] local rows
        active = self.sampler.select(
            labels, queries.detach(), self.weight.detach(), torch.is_grad_enabled()
        )
        if active is None:
            return None, self.num_classes
        total = torch.tensor([len(active.rows)], dtype=torch.int64, device=self.weight.device)
        if self.process_group is not None:
            dist.all_reduce(total, group=self.process_group)
        return active, int(total)

    @torch.no_grad()
    def refresh_sampler(self) -> None:
        """Let the sampler take in the training steps since the last call and rebuild its graph
        or index when due (see ``Sampler.refresh``; collective on ``process_group`` when the
        sampler's is). Call it before the first training step and after each optimizer step."""
        self.sampler.refresh(self.weight.detach())

    def lookup(self, class_ids: torch.Tensor) -> torch.Tensor:
        """The weights of ``class_ids`` (global ids, any shape, rows of any shard) -> [*shape, D],
        with a row-sparse gradient into this shard's weight: a backbone may take the classes'
        weights as its input embeddings (weight tying), and the optimizers then update the rows
        looked up besides the rows the loss scored.

        For a backbone under DDP: the head hands the backbone gradients ``world_size`` times
        their value (DDP averages them over the ranks), so the gradient arriving here is divided
        by ``world_size`` before it reaches the weight, which DDP does not average.

        Collectives on ``process_group`` (every rank calls it, in the same order; see
        ``megaclass.distributed.lookup_rows``): forward 3 (sizes, ids, a reduce-scatter of the
        rows), backward 1 (an all_gather of their gradient).
        """
        if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= self.num_classes):
            raise ValueError(
                f"class ids must be in [0, {self.num_classes}), got "
                f"[{int(class_ids.min())}, {int(class_ids.max())}]"
            )
        flat = class_ids.reshape(-1)
        rows = lookup_rows(
            self.weight, flat, self.class_range[0], self.process_group, 1.0 / self.world_size
        )
        return rows.view(*class_ids.shape, self.embedding_dim)

    @torch.no_grad()
    def predict_topk(
        self, embeddings: torch.Tensor, k: int = 5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` highest-scoring classes over all shards, exactly (chunk by chunk).

        embeddings [B_local, D] -> (scores [B_local, k], global class ids [B_local, k]). Scores are
        logits without margin (cosine x scale for normalised margins), whatever the sampler.
        Collectives on ``process_group``: the input check and all_gathers of the embeddings,
        then one all_gather of each rank's [B, k] scores and of their class ids.
        ``ValueError`` unless 1 <= k <= num_classes.
        """
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be in [1, num_classes] = [1, {self.num_classes}], got {k}")
        labels = torch.zeros(len(embeddings), dtype=torch.int64, device=embeddings.device)
        sizes = self._validated_batch_sizes(embeddings, labels)
        queries = gather_rows(embeddings, sizes, self.process_group).float()  # [B, D]
        if self.margin.normalize:
            queries = F.normalize(queries, dim=1) * self.margin.scale
        scores, rows = shard_topk(
            queries,
            self.weight.detach(),
            k,
            normalize=self.margin.normalize,
            chunk_size=self.chunk_size,
            matmul_dtype=self.matmul_dtype,
        )
        scores = _pad_columns(scores, k, float("-inf"))  # a shard may hold fewer than k classes
        ids = _pad_columns(rows + self.class_range[0], k, -1)
        every = [len(queries)] * self.world_size
        all_scores = gather_rows(scores, every, self.process_group).view(self.world_size, -1, k)
        all_ids = gather_rows(ids, every, self.process_group).view(self.world_size, -1, k)
        best, order = all_scores.permute(1, 0, 2).reshape(len(queries), -1).topk(k, dim=1)
        best_ids = all_ids.permute(1, 0, 2).reshape(len(queries), -1).gather(1, order)
        start = sum(sizes[: self.rank])
        local = slice(start, start + sizes[self.rank])
        return best[local], best_ids[local]

    def _validated_batch_sizes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> list[int]:
        """Every rank's batch size, after checking every rank's shapes (same error on all ranks)."""
        finite = not self.check_finite or bool(torch.isfinite(embeddings).all())
        status = [
            embeddings.shape[0] if embeddings.dim() == 2 else -1,
            embeddings.shape[-1] if embeddings.dim() == 2 else -1,
            labels.shape[0] if labels.dim() == 1 else -1,
            int(not labels.dtype.is_floating_point and labels.dtype != torch.bool),
            int(finite),
        ]
        every = all_gather_ints(status, self.process_group)
        for rank, (rows, width, num_labels, integer_labels, finite) in enumerate(every):
            where = f" on rank {rank}" if self.process_group is not None else ""
            if rows < 0 or num_labels < 0:
                raise ValueError(
                    f"embeddings must be [batch, {self.embedding_dim}] and labels [batch]{where}; "
                    f"got embeddings {tuple(embeddings.shape)}, labels {tuple(labels.shape)}"
                )
            if width != self.embedding_dim:
                raise ValueError(
                    f"embeddings have width {width}{where}, the head expects {self.embedding_dim}"
                )
            if rows != num_labels:
                raise ValueError(f"{rows} embeddings but {num_labels} labels{where}")
            if not integer_labels:
                raise ValueError(f"labels must be an integer tensor (int64){where}")
            if not finite:
                raise ValueError(
                    f"embeddings contain NaN or inf{where} (check_finite=False skips this check)"
                )
        return [rows for rows, *_ in every]

    def _check_labels(self, all_labels: torch.Tensor, sizes: list[int]) -> None:
        bad = ((all_labels < 0) | (all_labels >= self.num_classes)) & (
            all_labels != self.ignore_index
        )
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            rank = next(r for r in range(len(sizes)) if index < sum(sizes[: r + 1]))
            where = f" on rank {rank}" if self.process_group is not None else ""
            raise ValueError(
                f"label {int(all_labels[index])} (sample {index - sum(sizes[:rank])}{where}) is "
                f"outside the valid range [0, {self.num_classes}); use ignore_index="
                f"{self.ignore_index} for samples that should not count"
            )


def _check_margin(margin: object) -> None:
    """``ValueError`` unless ``margin`` is None or one of the margins of ``megaclass.margins``."""
    if margin is None or isinstance(margin, Margin):
        return
    available = ", ".join(f"{cls.__name__}()" for cls in typing.get_args(Margin))
    raise ValueError(
        f"margin must be a megaclass.margins instance, got {margin!r} "
        f"({type(margin).__name__}); available: {available}, e.g. "
        "margin=megaclass.margins.ArcFace(scale=64.0, margin=0.5)"
    )


DRAWN_ROWS = ("one_step", "corrected")


def _drawn_rows_step(selection: Selection | None) -> torch.Tensor | None:
    """[A] factors of the active rows' weight gradient: each drawn row's draw rate (exp of minus
    its logit offset), 1 for rows chosen outright; None without drawn rows.

    A drawn row's corrected logit makes it stand for ``n / d`` classes, so that the embeddings'
    gradient estimates the full softmax's; its own gradient is then ``n / d`` times the push the
    full softmax would give it this step, unbiased over draws but applied at once, from where the
    row is now. Under the full softmax that push comes a step at a time and shrinks as the row
    moves away (its probability falls); at once, it overshoots, and rows drawn often end far from
    their own samples. So each drawn row takes this step's push only (``d / n`` of the corrected
    gradient), while the embeddings keep the corrected softmax (measured in
    ``benchmarks/results/stability.md``: without it a larger budget scored worse than a smaller
    one). Sample groups (``ANN`` with a uniform draw) keep their corrected gradient. Used with
    ``drawn_rows="one_step"``: under RowAdaGrad it cost next-item accuracy (the same document).
    """
    if selection is None or selection.logit_offsets is None or selection.groups is not None:
        return None
    return torch.exp(-selection.logit_offsets)


def _pad_columns(values: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """[B, j] -> [B, k] with ``fill`` in the missing columns (j <= k)."""
    pad = values.new_full((values.shape[0], k - values.shape[1]), fill)
    return torch.cat([values, pad], dim=1)


def _initial_rows(start: int, stop: int, dim: int, seed: int) -> torch.Tensor:
    """Initial weights of global classes [start, stop), N(0, 0.01^2) as in Partial FC; drawn in
    seeded blocks."""
    pieces = [torch.empty(0, dim)]
    for block in range(start // _INIT_BLOCK, -(-stop // _INIT_BLOCK)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.randn(_INIT_BLOCK, dim, generator=generator) * _INIT_STD
        lo, hi = block * _INIT_BLOCK, (block + 1) * _INIT_BLOCK
        pieces.append(rows[max(start, lo) - lo : min(stop, hi) - lo])
    return torch.cat(pieces)
