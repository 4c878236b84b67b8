"""Backbones."""

from megaclass.models.mlp import MLP, build_backbone

__all__ = ["MLP", "build_backbone"]
