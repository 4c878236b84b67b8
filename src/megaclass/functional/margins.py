"""Margins on the target logit of a softmax cross entropy.

A margin says how a sample's logits are formed from its embedding ``x`` and the class weights
``w``:

- ``Softmax``: plain logits ``x . w``; no normalisation, no scale.
- every other margin: cosine logits. ``cos_j = x/|x| . w_j/|w_j|``; a non-target class gets the
  logit ``scale * cos_j`` and the target class ``y`` gets ``scale * psi(cos_y)``, where ``psi``
  pushes the target away (the "margin").

Only ``target_logit`` differs between margins: it maps the target cosine ``[B]`` to the target
logit ``[B]``. The head differentiates it with autograd on that ``[B]`` vector, so every margin
gets its exact gradient without a hand-written derivative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

# acos has an infinite derivative at +-1; cosines are kept this far inside the interval.
_COS_CLAMP = 1.0 - 1e-7


@dataclass(frozen=True)
class Softmax:
    """Plain softmax over ``x . w`` (an ``nn.Linear`` without bias followed by cross entropy)."""

    scale: ClassVar[float] = 1.0
    normalize: ClassVar[bool] = False

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos


@dataclass(frozen=True)
class NormSoftmax:
    """Softmax over ``scale * cos``: normalised embeddings and weights, no margin."""

    scale: float = 64.0
    normalize: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_scale(self.scale)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return self.scale * cos


@dataclass(frozen=True)
class CosFace:
    """Additive cosine margin (CosFace / AM-softmax): target logit ``scale * (cos - margin)``."""

    scale: float = 64.0
    margin: float = 0.4
    normalize: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        _check_range("CosFace margin", self.margin, 2.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return self.scale * (cos - self.margin)


@dataclass(frozen=True)
class ArcFace:
    """Additive angular margin (ArcFace): target logit ``scale * cos(theta + margin)``.

    ``theta = acos(cos)``. Where ``theta + margin > pi`` the angle would wrap round and the penalty
    would start to favour the target again; there the target logit falls back to
    ``scale * (cos - margin * sin(margin))`` (InsightFace's rule: the first-order penalty at the
    boundary), which keeps it decreasing in ``theta``.

    ``straight_through=False`` (default) back-propagates the exact derivative of
    ``cos(theta + margin)``. ``straight_through=True`` back-propagates as if there were no margin
    (``d logit / d cos = scale``), as InsightFace's in-place ``no_grad`` implementation does; it
    avoids the large derivative of ``acos`` near ``cos = +-1``.
    """

    scale: float = 64.0
    margin: float = 0.5
    straight_through: bool = False
    normalize: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        _check_range("ArcFace margin", self.margin, math.pi)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return _angular_target_logit(cos, self.scale, 1.0, self.margin, 0.0, self.straight_through)


@dataclass(frozen=True)
class CombinedMargin:
    """Combined margin: target logit ``scale * (cos(m1 * theta + m2) - m3)``.

    ``m1`` is SphereFace's multiplicative angular margin, ``m2`` ArcFace's additive angular margin,
    ``m3`` CosFace's additive cosine margin. Where ``m1 * theta + m2 > pi`` the target logit falls
    back to ``scale * (cos - m3 - m2 * sin(m2))``; ``straight_through`` is as for ``ArcFace``.
    """

    scale: float = 64.0
    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    straight_through: bool = False
    normalize: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        if self.m1 < 1.0:
            raise ValueError(f"CombinedMargin m1 must be >= 1, got {self.m1}")
        _check_range("CombinedMargin m2", self.m2, math.pi)
        _check_range("CombinedMargin m3", self.m3, 2.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return _angular_target_logit(
            cos, self.scale, self.m1, self.m2, self.m3, self.straight_through
        )


def _angular_target_logit(
    cos: torch.Tensor, scale: float, m1: float, m2: float, m3: float, straight_through: bool
) -> torch.Tensor:
    """``scale * (cos(m1 * acos(cos) + m2) - m3)`` with the fallback past ``pi``; [B] -> [B]."""
    if m1 == 1.0 and m2 == 0.0:
        penalised = cos - m3
    else:
        angle = m1 * torch.acos(cos.clamp(-_COS_CLAMP, _COS_CLAMP)) + m2
        fallback = cos - m3 - m2 * math.sin(m2)
        penalised = torch.where(angle <= math.pi, torch.cos(angle) - m3, fallback)
    if straight_through:
        return scale * cos + (scale * penalised - scale * cos).detach()
    return scale * penalised


Margin = Softmax | NormSoftmax | CosFace | ArcFace | CombinedMargin


def _check_scale(scale: float) -> None:
    if not scale > 0.0:
        raise ValueError(f"scale must be > 0, got {scale}")


def _check_range(name: str, value: float, upper: float) -> None:
    if not 0.0 <= value < upper:
        raise ValueError(f"{name} must be in [0, {upper:.4g}), got {value}")
