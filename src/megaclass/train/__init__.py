"""Config, training loop, checkpoints and evaluation."""

from megaclass.train.checkpoint import CheckpointError
from megaclass.train.config import RunConfig, load_config
from megaclass.train.health import TrainingCollapsed
from megaclass.train.loop import Interrupted, NonFiniteLoss, evaluate_run, train

__all__ = [
    "CheckpointError",
    "Interrupted",
    "NonFiniteLoss",
    "RunConfig",
    "TrainingCollapsed",
    "evaluate_run",
    "load_config",
    "train",
]
