"""The trainer's evaluation ranks every class, also of catalogues smaller than its k."""

from types import SimpleNamespace

import torch
from torch import nn

import megaclass
from megaclass.train.tasks import ranked


def test_ranking_fewer_classes_than_k_pads_the_ranks_past_the_last_class_with_minus_one():
    model = SimpleNamespace(backbone=nn.Identity(), head=megaclass.ClassifierHead(3, 4))
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    ((top, labels),) = list(ranked(model, [batch], k=5))
    assert top.shape == (5, 5) and torch.equal(labels, batch[1])
    assert (top[:, 3:] == -1).all() and (top[:, :3].sort(1).values == torch.arange(3)).all()
