"""megaclass: training classifiers and embedding models with millions to hundreds of millions of
classes. See ``ClassifierHead``."""

from megaclass import margins, optim, samplers
from megaclass.heads import ClassifierHead, HeadOutput
from megaclass.process import tune_process

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead",
    "HeadOutput",
    "__version__",
    "margins",
    "optim",
    "samplers",
    "tune_process",
]
