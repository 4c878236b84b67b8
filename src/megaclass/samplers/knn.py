"""The ``KNN`` sampler: KNN softmax, the batch's classes and their neighbours in a class graph."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from megaclass.distributed import all_gather_ints, gather_rows
from megaclass.index import build_ivf_knn_graph, build_knn_graph
from megaclass.index.binary_graph import build_binary_graph_knn
from megaclass.samplers.base import Sampler, Shard
from megaclass.samplers.frequent import FrequentClasses
from megaclass.samplers.stratified import CountStrata, select_with_count_fill
from megaclass.samplers.uniform import Selection, first_occurrences, select_with_fill
from megaclass.samplers.walk import walk_graph

_WALK_ENTRY_POOL = 4096  # most frequent classes a graph walk may start from (all scored)


BUILDS = ("auto", "exact", "ivf", "binary_graph")


@dataclass
class KNN(Sampler):
    """A step scores the batch's labels and ``budget`` classes besides them: first (with
    ``frequent_share``) the shard's most frequent training classes so far, then (with ``walk_k``)
    each sample's best classes found by a walk of the class graph, then the labels' neighbours in
    the class KNN graph (nearest first; the ranking is cut from its end to leave ``random_share``
    of the budget), then uniformly drawn classes, to exactly ``budget`` more than the labels.

    The labels do not use up the budget: when a batch's labels cover many of the classes (a small
    catalogue, or a large batch), a budget that included them would leave no room for negatives
    of the sampler's choice, and each sample's softmax would run over the batch's labels alone
    (measured in ``benchmarks/results/stability.md``).

    k: neighbours per class in the graph.
    budget: classes scored besides the labels, a fraction of all classes (0 < budget <= 1) or an
        absolute count (> 1), split over the ranks in proportion to their shards.
    refresh_every: training steps between rebuilds of the graph (it is built before the first).
    build: how the graph is built: ``"exact"`` (blocked matrix products, C^2 D work),
        ``"ivf"`` (approximate, from an inverted-file partition, about C * nprobe * sqrt(C) * D
        work), ``"binary_graph"`` (approximate: the pruned near links of a ``BinaryGraph`` over
        the class rows, built by cosine; ``megaclass bench graph`` measures each build's
        recall) or ``"auto"``: exact up to ``EXACT_UP_TO`` classes, IVF beyond.
    nprobe: IVF lists searched per list (more: better recall, proportionally slower).
    random_share: share of the budget kept for uniformly drawn classes even when the neighbours
        would fill it, so that every class keeps being pushed away from the batch now and then.
    logit_correction: the drawn classes' logits get ``log(n / d)``, as in ``Random`` (see
        ``Selection``): the neighbours are scored outright, the drawn classes stand for the rest.
    frequent_share: share of the budget kept for the classes seen most often as training labels
        so far (counted on each shard, see ``FrequentClasses``), scored outright. Under
        long-tailed class frequencies the rows of frequent classes dominate the softmax of a
        rarely seen class's samples, and a uniform draw over a tenth of the classes holds them
        in one step of ten (measured in ``benchmarks/results/accuracy.md``).
    fill: how the rest of the budget is drawn from the classes not chosen outright:
        ``"uniform"``, or ``"frequency"``: in proportion to how often each class was a training
        label so far (+ 0.1), stratified by count so that the draw keeps its exact size, each
        drawn class logit-corrected for its stratum (see ``samplers.stratified``). It lowers the
        variance of the sampled softmax's estimate of the classes left out (measured in
        ``benchmarks/results/accuracy.md``).
    walk_k: with ``frequent_share``, also score outright each sample's ``walk_k`` best classes
        found by walking the class graph from its label and its best frequent classes (see
        ``walk_graph``), after the frequent classes and before the labels' neighbours: the
        rows that dominate a sample's softmax, which the class graph alone does not hold when
        a class's row is far from its samples (rarely seen classes).

    State (``state_dict``): the graph (``"graph"``, [num_local, k] int32 global ids), the label
    counts of ``FrequentClasses`` (with a frequent share or a frequency fill) and the training
    steps since the graph was built. Collectives: ``select`` all_gathers one int and the
    neighbour lists of the batch's labels; ``refresh`` builds the graph over every rank (see
    ``build_knn_graph``) when due: before the first step and every ``refresh_every`` steps.
    """

    EXACT_UP_TO: ClassVar[int] = 1 << 17  # classes up to which the graph is built exactly

    k: int = 32  # neighbours per class in the class graph
    budget: float = 0.05  # classes scored besides the labels: a fraction (<= 1) or a count
    refresh_every: int = 150  # steps between graph rebuilds
    build: str = "auto"  # "exact", "ivf", "binary_graph" or "auto" (exact up to 2^17 classes)
    nprobe: int = 4  # ivf graph: lists each class searches
    random_share: float = 0.25  # share of the budget always drawn uniformly
    logit_correction: bool = True  # drawn classes' logits + log(1 / draw rate)
    frequent_share: float = 0.0  # share of the budget for the most frequent labels so far
    walk_k: int = 0  # with a frequent share: classes per sample from a graph walk
    fill: str = "frequency"  # rest of the budget drawn by label "frequency" or "uniform"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"KNN k must be >= 1, got {self.k}")
        if not self.budget > 0:
            raise ValueError(
                f"KNN budget must be > 0 (a fraction <= 1 or a count), got {self.budget}"
            )
        if self.refresh_every < 1:
            raise ValueError(f"KNN refresh_every must be >= 1, got {self.refresh_every}")
        if self.build not in BUILDS:
            raise ValueError(f"KNN build must be one of {BUILDS}, got {self.build!r}")
        if self.nprobe < 1:
            raise ValueError(f"KNN nprobe must be >= 1, got {self.nprobe}")
        if not 0 <= self.random_share <= 1:
            raise ValueError(f"KNN random_share must be in [0, 1], got {self.random_share}")
        if not 0 <= self.frequent_share <= 1 - self.random_share:
            raise ValueError(
                f"KNN frequent_share must be in [0, 1 - random_share], got {self.frequent_share}"
                f" with random_share {self.random_share}"
            )
        if self.walk_k < 0 or (self.walk_k > 0 and self.frequent_share == 0):
            raise ValueError(
                f"KNN walk_k must be >= 0, and > 0 only with a frequent_share (the walks start "
                f"from frequent classes), got walk_k {self.walk_k}, frequent_share "
                f"{self.frequent_share}"
            )
        if self.fill not in ("uniform", "frequency"):
            raise ValueError(f"KNN fill must be 'uniform' or 'frequency', got {self.fill!r}")
        if self.fill == "frequency" and not self.logit_correction:
            raise ValueError(
                "KNN fill='frequency' needs logit_correction=True (its draws are unequal: "
                "uncorrected, they would bias the softmax towards frequent classes)"
            )

    def counts_labels(self) -> bool:
        """Whether the head keeps per-class training-label counts (``FrequentClasses``)."""
        return self.frequent_share > 0 or self.fill == "frequency"

    def uses_ivf(self, num_classes: int) -> bool:
        """Whether the graph of ``num_classes`` classes is built approximately."""
        return self.build == "ivf" or (self.build == "auto" and num_classes > self.EXACT_UP_TO)

    def local_frequent(self, budget: int) -> int:
        """Frequent classes a shard scoring ``budget`` classes per step keeps."""
        return int(self.frequent_share * budget)

    def local_budget(self, num_classes: int, num_local: int) -> int:
        """Classes this shard scores per step besides its labels."""
        total = self.budget * num_classes if self.budget <= 1 else min(self.budget, num_classes)
        return min(num_local, round(total * num_local / num_classes))

    def bind(self, shard: Shard) -> None:
        super().bind(shard)
        self.graph: torch.Tensor | None = None  # [num_local, k] int32 global ids
        self.frequent = (
            FrequentClasses(shard.num_local, shard.device, stratify=self.fill == "frequency")
            if self.counts_labels()
            else None
        )
        self.steps_since_graph = 0
        self.trained_positives: list[torch.Tensor] = []  # labels of the steps since refresh

    def select(
        self, labels: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, training: bool
    ) -> Selection:
        """Labels (+ frequent classes, + each sample's classes found by a walk of the graph) +
        graph neighbours of every label of the batch, fitted to the budget (see ``Sampler``).

        Collectives on the shard's process group: an all_gather of one int and one of the
        neighbour lists [labels owned, k] of every rank.
        """
        if self.graph is None:
            raise RuntimeError(
                "KNN has no class graph yet: call head.refresh_sampler() before the first "
                "training step and after each optimizer step"
            )
        shard = self.shard
        positives = labels[labels >= 0]
        if training:
            self.trained_positives.append(positives)
        budget = self.local_budget(shard.num_classes, shard.num_local)
        frequent = self.frequent
        walked = None
        if self.walk_k > 0 and len(frequent.rows) > 0:
            entries = frequent.entries(_WALK_ENTRY_POOL)
            start = shard.class_range[0]
            walked = walk_graph(queries, labels, entries, weight, self.graph, start, self.walk_k)
        mine = self.graph[positives].long()  # [n_own, k]
        sizes = [n for (n,) in all_gather_ints([len(mine)], shard.process_group)]
        neighbours = gather_rows(mine, sizes, shard.process_group)  # [n_all, k]
        return self.choose(
            positives,
            neighbours,
            shard.class_range[0],
            shard.num_local,
            budget,
            self.generator,
            None if frequent is None else frequent.rows,
            walked,
            None if frequent is None else frequent.strata,
        )

    def refresh(self, weight: torch.Tensor) -> None:
        """Count the trained steps' labels (refreshing the frequent classes in the steps
        numbered 1, 2, 4, ... since the graph was built) and build the graph when due.
        Collective when it builds (``build_knn_graph``)."""
        for positives in self.trained_positives:
            self.steps_since_graph += 1
            if self.frequent is not None:
                self.frequent.count(positives)
                if self.steps_since_graph & (self.steps_since_graph - 1) == 0:
                    budget = self.local_budget(self.shard.num_classes, self.shard.num_local)
                    self.frequent.refresh(self.local_frequent(budget))
        self.trained_positives = []
        if self.rebuild_due():
            self.graph = self._build(weight)
            self.steps_since_graph = 0

    def rebuild_due(self) -> str | None:
        steps = self.steps_since_graph + len(self.trained_positives)
        if self.graph is not None and steps < self.refresh_every:
            return None
        how = self.build if self.build == "binary_graph" else "exact"
        how = "IVF" if self.uses_ivf(self.shard.num_classes) else how
        return f"class graph ({how}, {self.shard.num_classes:,} classes)"

    def _build(self, weight: torch.Tensor) -> torch.Tensor:
        """The class graph of this shard's classes (the build logs its progress to
        ``megaclass.index`` when it takes long)."""
        shard = self.shard
        settings = {"chunk_size": shard.chunk_size or 8192, "matmul_dtype": shard.matmul_dtype}
        if self.build == "binary_graph":
            return build_binary_graph_knn(
                weight, shard.num_classes, self.k, shard.process_group, seed=shard.seed
            )
        if self.uses_ivf(shard.num_classes):
            build = functools.partial(
                build_ivf_knn_graph, nprobe=self.nprobe, seed=shard.seed, **settings
            )
        else:
            build = functools.partial(build_knn_graph, **settings)
        return build(weight, shard.num_classes, self.k, shard.process_group)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        state = super().state_dict()
        if self.graph is not None:
            state["class_rows"]["graph"] = self.graph
        if self.frequent is not None:
            state["class_rows"].update(self.frequent.state())
        state["shared"]["steps_since_graph"] = torch.tensor(self.steps_since_graph)
        return state

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        super().load_state_dict(state)
        rows = state["class_rows"]
        self.graph = rows.get("graph")
        if self.frequent is not None and "knn_label_counts" in rows:
            self.frequent.load_state(rows)
        self.steps_since_graph = int(state["shared"].get("steps_since_graph", 0))

    def choose(
        self,
        positives: torch.Tensor,
        neighbours: torch.Tensor,
        class_start: int,
        num_local: int,
        budget: int,
        generator: torch.Generator,
        frequent: torch.Tensor | None = None,
        walked: torch.Tensor | None = None,
        strata: CountStrata | None = None,
    ) -> Selection:
        """Active rows of this shard (the rule of ``select``, given what it gathered).

        positives [n]: local rows of the batch's labels in this shard (may repeat);
        neighbours [m, k]: global ids of the graph neighbours of every label of the batch
        (all shards), nearest first, -1 for none;
        frequent [f]: local rows of the shard's most frequent classes (``frequent_share``);
        walked [B, w]: local rows found for each sample by ``walk_graph``, best first, -1 for
        none;
        strata: the shard's classes by label count, for ``fill="frequency"`` (None: before the
        first count, a uniform fill).
        """
        positives = positives.unique()
        ranked = [positives]
        if frequent is not None:
            ranked.append(frequent)
        if walked is not None:
            best_first = walked.t().reshape(-1)  # every sample's best, then second best, ...
            ranked.append(best_first[best_first >= 0])
        nearest_first = neighbours.t().reshape(-1) - class_start  # all 1st, then all 2nd, ...
        ranked.append(nearest_first[(nearest_first >= 0) & (nearest_first < num_local)])
        ranked = first_occurrences(torch.cat(ranked))
        wanted = min(num_local, len(positives) + budget)
        chosen = ranked[: wanted - int(self.random_share * budget)]
        if self.fill == "frequency" and strata is not None:
            return select_with_count_fill(chosen, wanted, strata, generator)
        return select_with_fill(chosen, wanted, num_local, generator, self.logit_correction)
