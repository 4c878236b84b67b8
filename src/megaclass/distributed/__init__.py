"""Shard arithmetic and autograd-aware collectives (the communication contract is in each
docstring). Nothing here knows about losses."""

from megaclass.distributed.collectives import (
    all_gather_ints,
    exchange_rows,
    gather_rows,
    logsumexp_across,
    lookup_rows,
    rank_and_size,
)
from megaclass.distributed.shard import shard_range, shard_sizes

__all__ = [
    "all_gather_ints",
    "exchange_rows",
    "gather_rows",
    "logsumexp_across",
    "lookup_rows",
    "rank_and_size",
    "shard_range",
    "shard_sizes",
]
