"""Class retrieval structures (no autograd): the exact blocked class KNN graph."""

from megaclass.index.knn_graph import build_knn_graph

__all__ = ["build_knn_graph"]
