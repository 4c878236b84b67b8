"""Backbones for the stability benchmarks (``model.backbone = "benchmarks.backbones:NAME"``, run
from the repository root with it on ``PYTHONPATH``)."""

from torch import nn

from megaclass.models import MLP


def mlp_without_batchnorm(input_dim: int, embedding_dim: int) -> nn.Module:
    """The default MLP as it was before its embedding got a ``BatchNorm1d``: the backbone on
    which the sampled heads collapsed."""
    model = MLP(input_dim, embedding_dim)
    del model.layers[-1]
    return model
