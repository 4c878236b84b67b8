"""Samplers decide which classes are active (scored) in a step."""

from megaclass.samplers.full import Full

Sampler = Full

__all__ = ["Full", "Sampler"]
