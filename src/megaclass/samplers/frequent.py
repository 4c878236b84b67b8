"""A shard's most frequent training classes so far, for ``KNN(frequent_share=...)``."""

from __future__ import annotations

import torch

from megaclass.samplers.stratified import CountStrata


class FrequentClasses:
    """Running counts of the training labels that one shard owns, and its ``size`` most counted
    classes as of the last ``refresh`` (and, with ``stratify``, the shard's classes bucketed by
    count for ``KNN(fill="frequency")``: ``strata``, O(num_local) per refresh).

    Counting costs O(batch) per step; a refresh is a top-k over the shard (O(num_local)), which
    the head does in the training steps numbered 1, 2, 4, 8, ... from each rebuild of the class
    graph (the rebuild's step being 1), so that its cost per step does not grow with the classes.

    counts: [num_local] int64, how often each class was a training label.
    rows: [f] int64, sorted local rows of the most counted classes (only classes seen at least
        once; ties broken by ``torch.topk``).
    """

    def __init__(
        self, num_local: int, device: torch.device | str | None = None, stratify: bool = False
    ) -> None:
        self.counts = torch.zeros(num_local, dtype=torch.int64, device=device)
        self.rows = torch.zeros(0, dtype=torch.int64, device=device)
        self.stratify = stratify
        self.strata: CountStrata | None = None  # with stratify, as of the last refresh
        self.stratified_counts: torch.Tensor | None = None  # the counts ``strata`` came from

    def count(self, positives: torch.Tensor) -> None:
        """Count a training step's labels: positives [n] local rows (may repeat)."""
        self.counts.index_add_(0, positives, torch.ones_like(positives))

    def refresh(self, size: int) -> None:
        """Make ``rows`` the (at most) ``size`` most counted classes."""
        top = self.counts.topk(min(size, len(self.counts)))
        self.rows = top.indices[top.values > 0].sort(stable=True).values
        if self.stratify:
            self._stratify(self.counts.clone())

    def _stratify(self, counts: torch.Tensor) -> None:
        self.stratified_counts = counts
        self.strata = CountStrata.of(counts)

    def entries(self, size: int) -> torch.Tensor:
        """The (at most) ``size`` most counted of ``rows``: [e] local rows."""
        return self.rows[self.counts[self.rows].topk(min(size, len(self.rows))).indices]

    def state(self) -> dict[str, torch.Tensor]:
        """Per-class rows for a checkpoint: the counts, which classes are in ``rows`` and, with
        strata, the counts they were built from (so that a resumed run draws as this one)."""
        chosen = torch.zeros(len(self.counts), dtype=torch.bool, device=self.counts.device)
        chosen[self.rows] = True
        state = {"knn_label_counts": self.counts, "knn_frequent": chosen}
        if self.stratified_counts is not None:
            state["knn_stratified_counts"] = self.stratified_counts
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()``'s rows (resharded by the checkpoint to this shard)."""
        self.counts = state["knn_label_counts"].to(self.counts.device)
        self.rows = state["knn_frequent"].nonzero().squeeze(1).to(self.counts.device)
        if self.stratify:
            self._stratify(state.get("knn_stratified_counts", self.counts).to(self.counts.device))
