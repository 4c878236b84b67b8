"""Shard arithmetic: which global class ids each rank owns (pure functions, no communication)."""

from __future__ import annotations


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous global class ids ``[start, stop)`` owned by ``rank``.

    The first ``num_classes % world_size`` ranks own one class more than the others, so 1007
    classes over 3 ranks give 336, 336 and 335.
    """
    if num_classes < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need num_classes >= 0, world_size >= 1 and 0 <= rank < world_size, got "
            f"num_classes={num_classes}, world_size={world_size}, rank={rank}"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_sizes(num_classes: int, world_size: int) -> list[int]:
    """Number of classes owned by each rank, in rank order."""
    return [
        stop - start
        for start, stop in (shard_range(num_classes, world_size, r) for r in range(world_size))
    ]
