"""The ``Random`` sampler: Partial FC's class sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaclass.samplers.base import Sampler
from megaclass.samplers.uniform import Selection, select_with_fill


@dataclass
class Random(Sampler):
    """On each rank: the classes of the global batch that it owns, plus uniformly drawn other
    classes of its shard up to ``rate`` of the shard (Partial FC). A batch whose positives
    already exceed the rate keeps all of them. ``Random(rate=1.0)`` scores every class, exactly
    as ``Full()``.

    logit_correction: add ``log(n / d)`` to the logits of the ``d`` drawn classes that stand for
        the ``n`` classes not in the batch (see ``Selection``); off, this is Partial FC exactly.
        (Measured in ``benchmarks/results/accuracy.md``.)
    """

    rate: float = 0.1  # share of each shard scored per step, labels included
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
        wanted = max(int(self.rate * num_local), len(positives))
        return select_with_fill(positives, wanted, num_local, self.generator, self.logit_correction)
