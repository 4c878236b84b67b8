"""The ``Random`` sampler: Partial FC's class sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaclass.samplers.base import Sampler
from megaclass.samplers.uniform import Selection, select_with_fill


@dataclass
class Random(Sampler):
    """On each rank: the classes of the global batch that it owns, plus ``rate`` of its shard
    drawn uniformly from the other classes (Partial FC's class sampling, with one difference:
    Partial FC draws up to ``rate`` of the shard including the labels, so that a batch whose
    labels cover that many classes is scored over its labels alone, which trains measurably
    worse: ``benchmarks/results/stability.md``). ``Random(rate=1.0)`` scores every class,
    exactly as ``Full()``.

    logit_correction: add ``log(n / d)`` to the logits of the ``d`` drawn classes that stand for
        the ``n`` classes not in the batch (see ``Selection``); off, this is Partial FC exactly.
        (Measured in ``benchmarks/results/accuracy.md``.)
    """

    rate: float = 0.1  # share of each shard drawn per step besides the labels
    logit_correction: bool = True  # drawn classes' logits + log(n / d)

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"Random rate must be in (0, 1], got {self.rate}")

    def select(
        self, labels: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, training: bool
    ) -> Selection:
        """The shard's labels in the batch plus a uniform draw: rows [A] (see ``Sampler``)."""
        positives = labels[labels >= 0].unique()
        num_local = self.shard.num_local
        wanted = min(num_local, len(positives) + int(self.rate * num_local))
        return select_with_fill(positives, wanted, num_local, self.generator, self.logit_correction)
