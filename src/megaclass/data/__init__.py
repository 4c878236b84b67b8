"""Data sets: the synthetic catalogue, feature files and next-item recommendation sequences. All
give ``num_classes``, ``train_batch(step, batch_size, rows)`` and ``eval_batches(batch_size)``;
the first two also ``input_dim``."""

from megaclass.data.features import FeatureFiles
from megaclass.data.seqrec import SeqRec
from megaclass.data.synthetic import SyntheticCatalog

__all__ = ["FeatureFiles", "SeqRec", "SyntheticCatalog"]
