"""``SASRec``: a causal self-attention encoder over a user's item history (Kang & McAuley, 2018)."""

from __future__ import annotations

import torch
from torch import nn


class SASRec(nn.Module):
    """Item histories [B, L] (item ids, 0 = padding, most recent last) -> embeddings [B, D]: the
    encoder's output at the last position, which attends to every earlier item.

    Item embedding (``num_items + 1`` rows, row 0 the padding) plus a learned position
    embedding, dropout, then ``num_layers`` pre-norm Transformer layers in which position i
    attends to the items at positions <= i (padding positions attend only to themselves, so no
    row of the attention is empty), then a final LayerNorm.
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(
                f"embedding_dim ({embedding_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.max_len = max_len
        self.items = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
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
        nn.init.normal_(self.items.weight, std=embedding_dim**-0.5)
        nn.init.normal_(self.positions.weight, std=embedding_dim**-0.5)
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
        x = self.items(histories) + self.positions.weight[None]  # [B, L, D]
        x = self.encoder(self.dropout(x), mask=blocked.repeat_interleave(self.num_heads, 0))
        return self.norm(x[:, -1])  # [B, D]
