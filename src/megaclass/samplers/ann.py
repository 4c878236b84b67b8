"""The ``ANN`` sampler: ANN softmax, classes retrieved per sample from a binary-code IVF index."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megaclass.functional import shard_topk
from megaclass.index.binary_codes import ROTATIONS
from megaclass.index.binary_ivf import BACKENDS, BinaryIVF
from megaclass.samplers.base import Sampler, Shard
from megaclass.samplers.selection import SampleGroups, Selection
from megaclass.samplers.uniform import fill_offsets, fill_uniform

SEARCHES = ("ivf", "exact")


@dataclass
class ANN(Sampler):
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
        Retrieval, not the size of the softmax, is what ann's accuracy hangs on: with too few
        lists probed a sample's hardest classes are missed and ann falls behind the full softmax
        as training converges (``benchmarks/results/stability.md``, ``docs/defaults.md``).
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
        candidates; its cost grows with the shard (measured in
        ``benchmarks/results/accuracy.md`` and ``ann-recall.md``).
    uniform: share of each shard drawn uniformly once per step and scored by every group beside
        its candidates. Retrieval alone gives each sample only its hardest negatives, so the
        softmax never sees the rest of the catalogue; the draw stands for it: for a group with
        ``c`` candidates in a shard of ``n`` rows, the ``d`` drawn rows that are not among them
        get ``log((n - c) / d)`` added to their logits (as ``Random``'s correction, see
        ``Selection``), so the group's sum of exponentials is an unbiased estimate of the sum
        over the whole shard. 0: retrieval only.

    State (``state_dict``): the training steps since the index was built. The index itself is
    not saved: ``refresh`` rebuilds it after a resume. No collective: each rank searches and
    indexes its own shard; ``refresh`` builds the index before the first step and every
    ``refresh_every`` steps, and in between re-encodes the rows each training step scored.
    """

    k: int = 64  # classes retrieved per sample (all shards)
    group_size: int = 64  # samples scored together over their candidates
    nprobe: int = 64  # coarse lists searched per sample
    num_lists: int = 0  # coarse lists per shard (0: sqrt of the shard)
    num_bits: int = 128  # code length (a multiple of 64)
    rotation: str = "random"  # "random" or "itq"
    rerank: int = 0  # candidates re-ranked by exact cosine (0: none)
    refresh_every: int = 150  # steps between index rebuilds (rows re-encoded in between)
    backend: str = "auto"  # Hamming scan: "torch", "faiss" or "auto" (faiss on CPU)
    uniform: float = 0.0  # share of the classes drawn per step for every group
    search: str = "ivf"  # "ivf" (the binary index) or "exact" (every class scored)

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

    def bind(self, shard: Shard) -> None:
        super().bind(shard)
        self.index: BinaryIVF | None = None  # this shard's classes ("ivf" search)
        self.steps_since_index = 0
        self.trained_rows: list[torch.Tensor] = []  # rows scored by the steps since refresh

    def select(
        self, labels: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, training: bool
    ) -> Selection:
        """Classes of this shard retrieved for every sample of the global batch, with the
        batch's labels, in groups of samples (see ``Sampler``). No collective."""
        k = self.local_k(self.shard.num_classes, self.shard.num_local)
        search = self._exact_search if self.search == "exact" else self._index_search
        retrieved, keys = search(queries, weight, k)
        selection = self.group(labels, retrieved, keys, self.shard.num_local, self.generator)
        if training:
            self.trained_rows.append(selection.rows)
        return selection

    def refresh(self, weight: torch.Tensor) -> None:
        """Build the index when due, else re-encode the rows the trained steps scored."""
        if self.search == "exact":
            return
        trained, self.trained_rows = self.trained_rows, []
        self.steps_since_index += len(trained)
        if self.rebuild_due():
            shard = self.shard
            self.index = BinaryIVF(
                self.num_bits,
                self.num_lists,
                self.rotation,
                seed=shard.seed * 1_000_003 + shard.rank,
                matmul_dtype=shard.matmul_dtype,
                backend=self.backend,
            ).build(weight)  # logs its progress to megaclass.index when it takes long
            self.steps_since_index = 0
        elif trained:
            self.index.update(torch.cat(trained).unique())

    def rebuild_due(self) -> str | None:
        if self.search == "exact":
            return None
        steps = self.steps_since_index + len(self.trained_rows)
        if self.index is not None and steps < self.refresh_every:
            return None
        return f"binary IVF index (per shard, {self.shard.num_classes:,} classes)"

    def _exact_search(
        self, queries: torch.Tensor, weight: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's k best rows of this shard, scored exactly: queries [B, D] -> (rows
        [B, k], grouping keys [B]: each sample's best row)."""
        shard = self.shard
        rows = shard_topk(
            queries.detach(),
            weight,
            k,
            normalize=shard.normalize,
            chunk_size=shard.chunk_size,
            matmul_dtype=shard.matmul_dtype,
        )[1]
        return rows, rows[:, 0]

    def _index_search(
        self, queries: torch.Tensor, weight: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's k rows of this shard found by the index: queries [B, D] -> (rows
        [B, k], -1 padded; grouping keys [B]: each sample's nearest coarse list)."""
        if self.index is None:
            raise RuntimeError(
                "ANN has no index yet: call head.refresh_sampler() before the first training "
                "step and after each optimizer step"
            )
        probes = self.index.assign(queries, self.nprobe)  # [B, nprobe]
        rows = self.index.search(queries, k, self.nprobe, self.rerank, probes=probes)[1]
        return rows, probes[:, 0]

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        state = super().state_dict()
        state["shared"]["steps_since_index"] = torch.tensor(self.steps_since_index)
        return state

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        super().load_state_dict(state)
        self.index = None  # rebuilt by the next refresh
        self.steps_since_index = int(state["shared"].get("steps_since_index", 0))

    def group(
        self,
        positives: torch.Tensor,
        retrieved: torch.Tensor,
        keys: torch.Tensor,
        num_local: int,
        generator: torch.Generator,
    ) -> Selection:
        """Active rows of this shard and each group's columns of them (the rule of ``select``,
        given what was retrieved).

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
