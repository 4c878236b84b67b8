"""Public home of the margins: ``megaclass.margins.ArcFace(scale=64.0, margin=0.5)`` and friends.

The math lives in ``megaclass.functional.margins``.
"""

from megaclass.functional.margins import (
    ArcFace,
    CombinedMargin,
    CosFace,
    Margin,
    NormSoftmax,
    Softmax,
)

__all__ = ["ArcFace", "CombinedMargin", "CosFace", "Margin", "NormSoftmax", "Softmax"]
