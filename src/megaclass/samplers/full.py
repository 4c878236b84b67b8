"""The ``Full`` sampler: every class is active in every step (the exact softmax)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Full:
    """Score every class of every shard in every step: the exact, full softmax.

    The head computes it chunk by chunk (see ``ClassifierHead(chunk_size=...)``), so its memory
    does not grow with ``batch x classes``; its time does.
    """
