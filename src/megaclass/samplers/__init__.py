"""Samplers decide which classes are active (scored) in a step."""

from megaclass.samplers.full import Full
from megaclass.samplers.knn import KNN
from megaclass.samplers.random import Random
from megaclass.samplers.uniform import Selection

Sampler = Full | Random | KNN

__all__ = ["KNN", "Full", "Random", "Sampler", "Selection"]
