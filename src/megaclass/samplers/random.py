"""The ``Random`` sampler: Partial FC's class sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaclass.samplers.uniform import fill_uniform


@dataclass(frozen=True)
class Random:
    """On each rank: the classes of the global batch that it owns, plus uniformly drawn other
    classes of its shard up to ``rate`` of the shard (Partial FC). A batch whose positives
    already exceed the rate keeps all of them. ``Random(rate=1.0)`` scores every class, exactly
    as ``Full()``.
    """

    rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"Random rate must be in (0, 1], got {self.rate}")

    def select(
        self, positives: torch.Tensor, num_local: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Active rows of this shard, sorted: positives [n] (local rows, may repeat) -> [A]."""
        positives = positives.unique()
        wanted = max(int(self.rate * num_local), len(positives))
        return fill_uniform(positives, wanted, num_local, generator)
