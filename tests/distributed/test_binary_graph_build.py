"""BinaryGraph built over 1, 2 and 3 ranks (gloo, uneven shards) is the same graph, by either
build distance."""

from __future__ import annotations

import torch

from megaclass.index.binary_graph import BinaryGraph, GraphSettings
from tests.distributed.harness import run_ranks

SETTINGS = [
    GraphSettings(
        num_bits=64, degree=12, candidates=24, partition_size=300, build_distance=kind, seed=3
    )
    for kind in ("cosine", "hamming")
]
SIZES = {2: [700, 500], 3: [200, 650, 350]}  # 1,200 vectors, uneven


def vectors() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(30, 16, generator=generator)
    which = torch.randint(0, 30, (1200,), generator=generator)
    return centres[which] + 0.4 * torch.randn(1200, 16, generator=generator)


def _build_shard(group, sizes):
    rank = torch.distributed.get_rank(group)
    start = sum(sizes[:rank])
    shard = vectors()[start : start + sizes[rank]]
    return [BinaryGraph(settings).build(shard, group).state_dict() for settings in SETTINGS]


def test_the_graph_built_on_1_2_and_3_ranks_is_the_same():
    alone = [BinaryGraph(settings).build(vectors()).state_dict() for settings in SETTINGS]
    assert alone[0]["centroids"].shape[0] == 8  # 1,200 x 2 / 300: partitions on every rank
    assert not torch.equal(alone[0]["graph"], alone[1]["graph"])
    for world_size, sizes in SIZES.items():
        for states in run_ranks(world_size, _build_shard, sizes):
            for settings, state, want in zip(SETTINGS, states, alone, strict=True):
                for name, tensor in want.items():  # every rank holds the whole index
                    assert torch.equal(state[name], tensor), (world_size, settings, name)
