"""megaclass: training classifiers and embedding models with millions to hundreds of millions of
classes. See ``ClassifierHead``."""

from megaclass import margins, optim, samplers
from megaclass.heads import ClassifierHead, HeadOutput
from megaclass.inference import Predictions, TrainedModel
from megaclass.process import tune_process
from megaclass.train.export import load_run

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead",
    "HeadOutput",
    "Predictions",
    "TrainedModel",
    "__version__",
    "load_run",
    "margins",
    "optim",
    "samplers",
    "tune_process",
]
