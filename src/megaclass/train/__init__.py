"""Config, training loop, checkpoints and evaluation."""

from megaclass.train.checkpoint import CheckpointError
from megaclass.train.config import RunConfig, load_config, resumed_config
from megaclass.train.export import export_run, load_run
from megaclass.train.health import TrainingCollapsed
from megaclass.train.loop import (
    Interrupted,
    NonFiniteLoss,
    evaluate_run,
    init_distributed,
    train,
)

__all__ = [
    "CheckpointError",
    "Interrupted",
    "NonFiniteLoss",
    "RunConfig",
    "TrainingCollapsed",
    "evaluate_run",
    "export_run",
    "init_distributed",
    "load_config",
    "load_run",
    "resumed_config",
    "train",
]
