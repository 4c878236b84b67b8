"""Class retrieval structures (no autograd): class KNN graphs, exact and from an IVF partition;
the binary-code IVF index of ANN softmax; the binary-code graph index and a float HNSW (faiss)
for serving."""

from megaclass.index.binary_graph import BinaryGraph, GraphSettings
from megaclass.index.binary_ivf import BinaryIVF
from megaclass.index.float_hnsw import FloatHNSW
from megaclass.index.ivf_graph import build_ivf_knn_graph, spherical_kmeans
from megaclass.index.knn_graph import build_knn_graph

__all__ = [
    "BinaryGraph",
    "BinaryIVF",
    "FloatHNSW",
    "GraphSettings",
    "build_ivf_knn_graph",
    "build_knn_graph",
    "spherical_kmeans",
]
