"""The ``Full`` sampler: every class is active in every step (the exact softmax)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaclass.samplers.base import Sampler


@dataclass
class Full(Sampler):
    """Score every class of every shard in every step: the exact, full softmax.

    The head computes it chunk by chunk (see ``ClassifierHead(chunk_size=...)``), so its memory
    does not grow with ``batch x classes``; its time does.
    """

    def select(self, labels, queries, weight, training) -> None:
        return None

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"class_rows": {}, "shared": {}, "rank": {}}
