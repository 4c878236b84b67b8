"""Samplers decide which classes are active (scored) in a step."""

from megaclass.samplers.full import Full
from megaclass.samplers.random import Random

Sampler = Full | Random

__all__ = ["Full", "Random", "Sampler"]
