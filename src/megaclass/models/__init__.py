"""Backbones, and how to rebuild one from its description (``BackboneSpec``)."""

from megaclass.models.mlp import MLP
from megaclass.models.sasrec import SASRec
from megaclass.models.spec import BackboneSpec

__all__ = ["MLP", "BackboneSpec", "SASRec"]
