"""Data sets: the synthetic catalogue and feature files. Both give ``num_classes``,
``input_dim``, ``train_batch(step, batch_size, rows)`` and ``eval_batches(batch_size)``."""

from megaclass.data.features import FeatureFiles
from megaclass.data.synthetic import SyntheticCatalog

__all__ = ["FeatureFiles", "SyntheticCatalog"]
