"""Class retrieval structures (no autograd): class KNN graphs, exact and from an IVF partition."""

from megaclass.index.ivf_graph import build_ivf_knn_graph, spherical_kmeans
from megaclass.index.knn_graph import build_knn_graph

__all__ = ["build_ivf_knn_graph", "build_knn_graph", "spherical_kmeans"]
