"""Obviously-correct twins of the fast paths: dense logits, margin on the target, F.cross_entropy.

Written independently of megaclass's own margin code, in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from megaclass import margins


def reference_target_logit(cos: torch.Tensor, margin) -> torch.Tensor:
    """The penalised target logit, spelled out per margin type."""
    if isinstance(margin, margins.Softmax):
        return cos
    s = margin.scale
    if isinstance(margin, margins.NormSoftmax):
        return s * cos
    if isinstance(margin, margins.CosFace):
        return s * (cos - margin.margin)
    if isinstance(margin, margins.ArcFace):
        m1, m2, m3 = 1.0, margin.margin, 0.0
    else:
        m1, m2, m3 = margin.m1, margin.m2, margin.m3
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    exact = torch.cos(m1 * theta + m2) - m3
    psi = torch.where(m1 * theta + m2 <= math.pi, exact, cos - m3 - m2 * math.sin(m2))
    if margin.straight_through:
        return s * cos + (s * psi - s * cos).detach()
    return s * psi


def reference_loss(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin,
    ignore_index: int = -100,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross entropy of the global batch over all classes, with explicit [B, C] logits;
    ``offsets`` [C] are added to every logit of their class except the target logits."""
    if margin.normalize:
        logits = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t()  # cosines
    else:
        logits = embeddings @ weight.t()
    valid = labels != ignore_index
    rows = valid.nonzero().squeeze(1)
    target = reference_target_logit(logits[rows, labels[rows]], margin)
    scaled = logits * (margin.scale if margin.normalize else 1.0)
    if offsets is not None:
        scaled = scaled + offsets
    scaled = scaled.index_put((rows, labels[rows]), target)
    if not bool(valid.any()):
        return scaled.sum() * 0.0
    return F.cross_entropy(scaled, labels, ignore_index=ignore_index)


ALL_MARGINS = [
    margins.Softmax(),
    margins.NormSoftmax(scale=16.0),
    margins.CosFace(scale=16.0, margin=0.35),
    margins.ArcFace(scale=16.0, margin=0.5),
    margins.ArcFace(scale=16.0, margin=0.5, straight_through=True),
    margins.CombinedMargin(scale=16.0, m1=1.2, m2=0.3, m3=0.1),
]


NUM_CLASSES, DIM, BATCH = 1007, 16, 29  # odd sizes: uneven shards


def sampled_problem():
    """Embeddings [BATCH, DIM], labels [BATCH] (one ignored) and weights [NUM_CLASSES, DIM]."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(BATCH, DIM, generator=g)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    y[2] = -100
    return x, y, torch.randn(NUM_CLASSES, DIM, generator=g)
