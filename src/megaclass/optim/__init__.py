"""Row-sparse optimizers for the class layer."""

from megaclass.optim.row_adagrad import RowAdaGrad
from megaclass.optim.sparse_sgd import SparseSGD

__all__ = ["RowAdaGrad", "SparseSGD"]
