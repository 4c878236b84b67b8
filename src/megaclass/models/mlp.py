"""Backbones: any ``torch.nn.Module`` mapping inputs [B, F] to embeddings [B, D]."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """``num_layers`` hidden layers (Linear, LayerNorm, GELU), then a linear embedding layer
    followed by ``BatchNorm1d``, as the face-recognition backbones that Partial FC trains end.

    The batch normalisation of the embedding is what keeps a sampled softmax stable: without
    it, at the default learning rate, the embeddings of a batch first collapse onto a common
    direction; the full softmax recovers (its negatives include every class absent from the
    batch, pushed away from that direction), a softmax sampled around the batch's labels does
    not (see ``docs/stability.md``).
    """

    def __init__(
        self, input_dim: int, embedding_dim: int, hidden_dim: int = 512, num_layers: int = 2
    ):
        super().__init__()
        layers, width = [], input_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
            width = hidden_dim
        layers += [nn.Linear(width, embedding_dim), nn.BatchNorm1d(embedding_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)  # [B, F] -> [B, D]
