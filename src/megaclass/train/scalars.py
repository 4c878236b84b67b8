"""TensorBoard scalars of a run (``train.tensorboard = true``): each number of each metrics.jsonl
record under its own name, at the record's step, in ``<run>/tensorboard``. Needs the tensorboard
package (``pip install "megaclass[tensorboard]"``), imported on first use."""

from __future__ import annotations

from pathlib import Path


def require_tensorboard():
    """torch's ``SummaryWriter``; a ValueError that says what to install when the tensorboard
    package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "train.tensorboard = true needs the tensorboard package: pip install "
            '"megaclass[tensorboard]"'
        ) from None
    return SummaryWriter


class TensorBoardScalars:
    """An event file in ``log_dir`` that metrics records are added to."""

    def __init__(self, log_dir: Path):
        self.writer = require_tensorboard()(log_dir=str(log_dir))

    def add(self, record: dict) -> None:
        """Each number of ``record`` but its step, as a scalar at that step."""
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        """Write out what is pending and close the event file."""
        self.writer.close()
