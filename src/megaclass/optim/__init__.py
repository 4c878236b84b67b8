"""Row-sparse optimizers for the class layer."""

from megaclass.optim.sparse_sgd import SparseSGD

__all__ = ["SparseSGD"]
