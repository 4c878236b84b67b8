"""Feature files: a folder with ``train_x.npy`` (float32 [N, F]), ``train_y.npy`` (int64 [N]),
``eval_x.npy`` and ``eval_y.npy``, opened memory-mapped and checked before training starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

FILES = ("train_x.npy", "train_y.npy", "eval_x.npy", "eval_y.npy")


class FeatureFiles:
    """Samples from feature files; each epoch visits the training rows in a seeded order."""

    def __init__(self, path: str | Path, num_classes: int = 0, seed: int = 0) -> None:
        folder = Path(path)
        arrays = {name: _open(folder / name) for name in FILES}
        train_x, train_y, eval_x, eval_y = (arrays[name] for name in FILES)
        for x_name, y_name in (("train_x.npy", "train_y.npy"), ("eval_x.npy", "eval_y.npy")):
            x, y = arrays[x_name], arrays[y_name]
            if x.ndim != 2 or x.dtype != np.float32:
                raise ValueError(
                    f"{folder / x_name}: expected float32 [N, F], got {x.dtype} {list(x.shape)}"
                )
            if y.ndim != 1 or y.dtype != np.int64:
                raise ValueError(
                    f"{folder / y_name}: expected int64 [N], got {y.dtype} {list(y.shape)}"
                )
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(
                    f"{folder / x_name} has {len(x)} rows but {folder / y_name} has {len(y)}; "
                    "they must be equal and non-zero"
                )
        if eval_x.shape[1] != train_x.shape[1]:
            raise ValueError(
                f"{folder / 'eval_x.npy'} has {eval_x.shape[1]} features, "
                f"{folder / 'train_x.npy'} has {train_x.shape[1]}"
            )
        self.num_classes = num_classes or int(max(train_y.max(), eval_y.max())) + 1
        for name in ("train_y.npy", "eval_y.npy"):
            low, high = int(arrays[name].min()), int(arrays[name].max())
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                raise ValueError(f"{folder / name}: label {bad} is outside [0, {self.num_classes})")
        self.input_dim = train_x.shape[1]
        self._train_x, self._train_y = train_x, train_y
        self._eval_x, self._eval_y = eval_x, eval_y
        self._seed = seed
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation)

    def train_batch(
        self, step: int, batch_size: int, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` of global training batch ``step``: inputs [n, F], labels [n]."""
        n = len(self._train_y)
        index = torch.arange(step * batch_size, (step + 1) * batch_size)[rows]
        positions = torch.empty_like(index)
        for epoch in index.div(n, rounding_mode="floor").unique().tolist():
            in_epoch = index.div(n, rounding_mode="floor") == epoch
            positions[in_epoch] = self._permutation(epoch)[index[in_epoch] % n]
        picked = np.sort(positions.numpy())  # memory-mapped reads in file order
        return torch.from_numpy(self._train_x[picked]), torch.from_numpy(self._train_y[picked])

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self._eval_y), batch_size):
            stop = start + batch_size
            yield (
                torch.from_numpy(
                    np.array(self._eval_x[start:stop])
                ),  # a copy: memmaps are read-only
                torch.from_numpy(np.array(self._eval_y[start:stop])),
            )

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self._seed * 7919 + epoch)
            self._order = (epoch, torch.randperm(len(self._train_y), generator=generator))
        return self._order[1]


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise ValueError(f"missing feature file {path} (needs {', '.join(FILES)})") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot read {path} as a .npy array: {error}") from None
