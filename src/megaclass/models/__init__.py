"""Backbones."""

from megaclass.models.mlp import MLP, build_backbone
from megaclass.models.sasrec import SASRec

__all__ = ["MLP", "SASRec", "build_backbone"]
