"""Samplers decide which classes are active (scored) in a step."""

from megaclass.samplers.ann import ANN
from megaclass.samplers.full import Full
from megaclass.samplers.knn import KNN
from megaclass.samplers.random import Random
from megaclass.samplers.selection import SampleGroups, Selection

Sampler = Full | Random | KNN | ANN

__all__ = ["ANN", "KNN", "Full", "Random", "SampleGroups", "Sampler", "Selection"]
