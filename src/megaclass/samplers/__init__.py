"""Samplers decide which classes are active (scored) in a step; each implements ``Sampler``."""

from megaclass.samplers.ann import ANN
from megaclass.samplers.base import Sampler, Shard
from megaclass.samplers.full import Full
from megaclass.samplers.knn import KNN
from megaclass.samplers.random import Random
from megaclass.samplers.selection import SampleGroups, Selection

__all__ = ["ANN", "KNN", "Full", "Random", "SampleGroups", "Sampler", "Selection", "Shard"]
