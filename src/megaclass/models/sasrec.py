"""``SASRec``: a causal self-attention encoder over a user's item history (Kang & McAuley, 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class SASRec(nn.Module):
    """Item histories [B, L] (item ids, 0 = padding, most recent last) -> embeddings [B, L, D],
    one per position: the encoder's output at position i has seen the items at positions <= i,
    so it predicts the item after position i (the last position: the next item of the history).

    Item embedding (``num_items + 1`` rows, row 0 the padding) plus a learned position
    embedding, dropout, then ``num_layers`` pre-norm Transformer layers in which position i
    attends to the items at positions <= i (padding positions attend only to themselves, so no
    row of the attention is empty), then a final LayerNorm.

    ``item_lookup`` ties the input embeddings to the output layer: a function from item classes
    (item id - 1) [n] to their vectors [n, D], e.g. ``ClassifierHead.lookup``, which works
    with a class-sharded head; the module then has no item table of its own and padding
    contributes zero vectors.
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        item_lookup: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(
                f"embedding_dim ({embedding_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.max_len = max_len
        self.item_lookup = item_lookup  # a plain function: the head's weights are not ours
        self.items = (
            None if item_lookup else nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        )
        self.positions = nn.Embedding(max_len, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            embedding_dim,
            num_heads,
            dim_feedforward=embedding_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embedding_dim)
        self.num_heads = num_heads
        later = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("later", later, persistent=False)  # [L, L] key after query
        nn.init.normal_(self.positions.weight, std=embedding_dim**-0.5)
        if self.items is not None:
            nn.init.normal_(self.items.weight, std=embedding_dim**-0.5)
            with torch.no_grad():
                self.items.weight[0].zero_()

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        if histories.dim() != 2 or histories.shape[1] != self.max_len:
            raise ValueError(
                f"histories must be [batch, {self.max_len}], got {tuple(histories.shape)}"
            )
        padding = histories == 0  # [B, L]
        self_only = torch.eye(self.max_len, dtype=torch.bool, device=histories.device)
        blocked = self.later | (padding[:, None, :] & ~self_only)  # [B, L query, L key]
        x = self._item_vectors(histories) + self.positions.weight[None]  # [B, L, D]
        x = self.encoder(self.dropout(x), mask=blocked.repeat_interleave(self.num_heads, 0))
        return self.norm(x)  # [B, L, D]

    def _item_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        """histories [B, L] -> [B, L, D], zero at padding."""
        if self.items is not None:
            return self.items(histories)
        present = histories > 0  # [B, L]; only items are looked up, padding stays zero
        rows = self.item_lookup(histories[present] - 1)  # [n, D]
        vectors = rows.new_zeros((*histories.shape, rows.shape[-1]))
        vectors[present] = rows
        return vectors
