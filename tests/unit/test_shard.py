import itertools

import pytest
import torch

from megaclass.distributed import shard_range, shard_sizes
from megaclass.heads.classifier import _initial_rows


def test_uneven_shards_cover_every_class_once():
    assert shard_sizes(1007, 3) == [336, 336, 335]
    for num_classes, world in [(1007, 3), (5, 8), (10, 1), (0, 2)]:
        ranges = [shard_range(num_classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_bad_shard_arguments_raise():
    with pytest.raises(ValueError):
        shard_range(10, 0, 0)
    with pytest.raises(ValueError):
        shard_range(10, 2, 2)


def test_initial_weights_do_not_depend_on_the_world_size():
    whole = _initial_rows(0, 200_000, 4, seed=3)
    parts = [_initial_rows(*shard_range(200_000, 3, r), 4, seed=3) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(_initial_rows(0, 10, 4, seed=4), whole[:10])
