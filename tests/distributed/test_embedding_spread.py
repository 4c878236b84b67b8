import pytest
import torch

from megaclass.train.health import embedding_spread
from tests.distributed.harness import run_ranks


def _spread_on_ranks(group, embeddings):
    rank, size = group.rank(), group.size()
    mine = embeddings.tensor_split(size)[rank]
    return embedding_spread(mine, group)


def test_spread_over_three_uneven_ranks_equals_one_rank():
    embeddings = torch.randn(11, 8) + torch.tensor([2.0] + [0.0] * 7)
    alone = embedding_spread(embeddings, None)
    for spread in run_ranks(3, _spread_on_ranks, embeddings):
        assert spread == pytest.approx(alone, rel=1e-5)
