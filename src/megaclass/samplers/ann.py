"""The ``ANN`` sampler: ANN softmax, classes retrieved per sample from a binary-code IVF index."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megaclass.index.binary_ivf import BACKENDS, ROTATIONS
from megaclass.samplers.selection import SampleGroups, Selection
from megaclass.samplers.uniform import fill_offsets, fill_uniform

SEARCHES = ("ivf", "exact")


@dataclass(frozen=True)
class ANN:
    """Each sample retrieves the classes whose weights score highest against its embedding (its
    hardest negatives) from a ``megaclass.index.BinaryIVF`` of the class weights (or, with
    ``search="exact"``, by scoring them all); samples are grouped and each group is scored over
    the union of its members' retrieved classes and labels.

    Exactly which classes a sample's softmax runs over: on every rank, the classes of that rank's
    shard retrieved for any sample of its group, plus the labels of its group that the shard
    owns, plus the step's uniform draw from the shard (``uniform``); summed over the ranks.
    Groups are formed on each rank: the global batch sorted by each sample's nearest coarse list
    of that rank's index, cut into runs of ``group_size``, so that members share many candidates
    and each group's logits are one dense block.

    k: classes retrieved per sample over all shards (each shard retrieves its share,
        ``ceil(k * shard / classes)``, from its own index).
    group_size: samples per group: 1 is a softmax per sample over its own candidates; the whole
        batch, one softmax over all candidates (as ``KNN``/``Random``). Larger groups: fewer,
        larger matrix products and more negatives per sample, at more cost per sample.
    nprobe: coarse lists searched per sample; num_lists: lists per shard (0: sqrt of the shard).
    num_bits: code length (a multiple of 64); rotation: ``"random"`` or ``"itq"``.
    rerank: the best ``rerank`` candidates by Hamming distance are re-ranked by exact cosine
        (0: none).
    refresh_every: steps between full rebuilds of the index (new coarse quantizer and rotation);
        in between, the rows each step updated are re-encoded before the next step.
    backend: the index's Hamming scan, ``"auto"``, ``"torch"`` or ``"faiss"`` (see
        ``BinaryIVF``); the results differ only in the order of rows at equal distance.
    search: ``"ivf"``, the index above, or ``"exact"``: every class of the shard scored against
        every sample, chunk by chunk (one more [B, C_local] matrix product per step, no index,
        no grouping lists: samples are grouped by their best class). Exact retrieval finds
        each sample's dominant rows, which a 128-bit code ranks poorly among near-equal
        candidates; its cost grows with the shard: cheap at 10^5 classes, but at 10^6 (1,024
        samples, 2 CPU threads, bf16) its retrieval alone takes 2.3 s, a third of the full
        softmax's step, where the index with ``nprobe=32, rerank=1000`` takes the whole step
        to 0.13x of full's, 0.28 points of held-out top-1 below it (README, accuracy).
    uniform: share of each shard drawn uniformly once per step and scored by every group beside
        its candidates. Retrieval alone gives each sample only its hardest negatives, so the
        softmax never sees the rest of the catalogue; the draw stands for it: for a group with
        ``c`` candidates in a shard of ``n`` rows, the ``d`` drawn rows that are not among them
        get ``log((n - c) / d)`` added to their logits (as ``Random``'s correction, see
        ``Selection``), so the group's sum of exponentials is an unbiased estimate of the sum
        over the whole shard. 0: retrieval only.
    """

    k: int = 256
    group_size: int = 64
    nprobe: int = 8
    num_lists: int = 0
    num_bits: int = 128
    rotation: str = "random"
    rerank: int = 0
    refresh_every: int = 1000
    backend: str = "auto"
    uniform: float = 0.0
    search: str = "ivf"

    def __post_init__(self) -> None:
        for name in ("k", "group_size", "nprobe", "refresh_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"ANN {name} must be >= 1, got {getattr(self, name)}")
        if self.num_lists < 0 or self.rerank < 0:
            raise ValueError(
                f"ANN num_lists and rerank must be >= 0, got {self.num_lists}, {self.rerank}"
            )
        if self.num_bits < 64 or self.num_bits % 64:
            raise ValueError(f"ANN num_bits must be a positive multiple of 64, got {self.num_bits}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"ANN rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ANN backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 0 <= self.uniform <= 1:
            raise ValueError(f"ANN uniform must be in [0, 1], got {self.uniform}")
        if self.search not in SEARCHES:
            raise ValueError(f"ANN search must be one of {SEARCHES}, got {self.search!r}")

    def local_k(self, num_classes: int, num_local: int) -> int:
        """Classes each sample retrieves from a shard of ``num_local`` classes."""
        return min(num_local, math.ceil(self.k * num_local / num_classes))

    def select(
        self,
        positives: torch.Tensor,
        retrieved: torch.Tensor,
        keys: torch.Tensor,
        num_local: int,
        generator: torch.Generator,
    ) -> Selection:
        """Active rows of this shard and each group's columns of them.

        positives [B]: local row of each sample's label, -1 where another shard owns it;
        retrieved [B, k]: local rows retrieved for each sample (-1 padded);
        keys [B]: the grouping key: each sample's nearest coarse list (or best class);
        num_local: rows in this shard; generator: draws the uniform share.
        """
        order = torch.argsort(keys, stable=True)
        members = order.split(self.group_size)
        candidates = torch.cat([retrieved, positives[:, None]], dim=1)  # [B, k + 1]
        chosen = [_distinct_rows(candidates[group]) for group in members]
        empty = retrieved.new_empty(0)
        drawn = fill_uniform(empty, round(self.uniform * num_local), num_local, generator)
        per_group = [torch.cat([rows, drawn]).unique() for rows in chosen]  # sorted
        offsets = tuple(
            fill_offsets(rows, own, num_local) for rows, own in zip(per_group, chosen, strict=True)
        )
        rows = torch.cat(per_group).unique()  # sorted
        if len(members) == 1:
            return Selection(rows, offsets[0])
        columns = tuple(torch.searchsorted(rows, group_rows) for group_rows in per_group)
        groups = SampleGroups(
            tuple(members), columns, offsets if any(o is not None for o in offsets) else None
        )
        return Selection(rows, groups=groups)


def _distinct_rows(candidates: torch.Tensor) -> torch.Tensor:
    """Sorted distinct rows >= 0 of candidates [b, c]."""
    flat = candidates.flatten()
    return flat[flat >= 0].unique()
