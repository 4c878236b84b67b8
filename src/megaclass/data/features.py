"""Feature files: a folder with ``train_x.npy`` (float32 [N, F]), ``train_y.npy`` (int64 [N]),
``eval_x.npy`` and ``eval_y.npy``, opened memory-mapped and checked before training starts:
shapes, dtypes, labels in range and features finite (read a block of rows at a time, so files
larger than memory are fine)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from megaclass.data.paths import missing_path_error, wrong_kind_error

FILES = ("train_x.npy", "train_y.npy", "eval_x.npy", "eval_y.npy")
_SCAN_BYTES = 1 << 26  # features read at once by the NaN/inf check
_LABEL_BLOCK = 1 << 22  # labels read at once when finding the classes without a sample
_EXAMPLES = 5  # classes without a training sample named in the warning
_log = logging.getLogger("megaclass.data")


class FeatureFiles:
    """Samples from feature files; each epoch visits the training rows in a seeded order.

    num_classes: 0 takes the largest label (of both splits) + 1; given, every label must be
    below it. After loading, ``label_range`` (the lowest and highest label of both splits) and
    ``empty_classes`` (how many of the classes no training label names) are logged to
    ``megaclass.data``: at INFO, and a WARNING when some class has no training sample (a
    mistyped label widens the range and leaves most classes empty).
    """

    def __init__(self, path: str | Path, num_classes: int = 0, seed: int = 0) -> None:
        folder = _feature_folder(Path(path))
        arrays = {name: _open(folder / name) for name in FILES}
        _check_shapes(folder, arrays)
        ranges = {name: _value_range(arrays[name]) for name in ("train_y.npy", "eval_y.npy")}
        self.label_range = (min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values()))
        self.num_classes = num_classes or self.label_range[1] + 1
        _check_label_ranges(folder, ranges, self.num_classes)
        for name in ("train_x.npy", "eval_x.npy"):
            check_finite_rows(arrays[name], folder / name)
        train_x, train_y, eval_x, eval_y = (arrays[name] for name in FILES)
        self.empty_classes = _report_labels(folder, train_y, self.label_range, self.num_classes)
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


def _check_shapes(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Features float32 [N, F] and labels int64 [N] of each split, N > 0, F the same."""
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
    train_width, eval_width = arrays["train_x.npy"].shape[1], arrays["eval_x.npy"].shape[1]
    if eval_width != train_width:
        raise ValueError(
            f"{folder / 'eval_x.npy'} has {eval_width} features, "
            f"{folder / 'train_x.npy'} has {train_width}"
        )


def _check_label_ranges(folder: Path, ranges: dict[str, tuple[int, int]], num_classes: int) -> None:
    """ranges: each label file's lowest and highest label, all to be in [0, num_classes)."""
    for name, (low, high) in ranges.items():
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{folder / name}: label {bad} is outside [0, {num_classes})")


def _value_range(labels: np.ndarray) -> tuple[int, int]:
    return int(labels.min()), int(labels.max())


def check_finite_rows(features: np.ndarray, path: Path) -> None:
    """``ValueError`` naming ``path`` and the first row of ``features`` [N, F] that holds NaN or
    inf; reads a block of rows at a time (a memory-mapped file larger than memory is fine)."""
    rows_per_block = max(1, _SCAN_BYTES // max(1, features.shape[1] * features.itemsize))
    for start in range(0, len(features), rows_per_block):
        finite = np.isfinite(features[start : start + rows_per_block]).all(axis=1)  # [rows]
        if not finite.all():
            row = start + int(np.argmin(finite))
            column = int(np.argmin(np.isfinite(features[row])))
            raise ValueError(
                f"{path}: row {row} holds {features[row, column]} (column {column}); features "
                "must be finite: NaN or inf would make the loss NaN"
            )


def classes_without_samples(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Which classes no label names: labels int64 [N] in [0, num_classes) (memory-mapped:
    read a block at a time) -> bool [num_classes], True where a class has no sample."""
    seen = np.zeros(num_classes, dtype=bool)
    for start in range(0, len(labels), _LABEL_BLOCK):
        seen[labels[start : start + _LABEL_BLOCK]] = True
    return ~seen


def _report_labels(
    folder: Path, train_labels: np.ndarray, label_range: tuple[int, int], num_classes: int
) -> int:
    """Log the label range and the number of classes (INFO), and warn about classes without a
    training sample; the number of those."""
    low, high = label_range
    _log.info(
        "feature files %s: %s training rows, labels %s to %s, %s classes",
        folder,
        f"{len(train_labels):,}",
        f"{low:,}",
        f"{high:,}",
        f"{num_classes:,}",
    )
    empty = classes_without_samples(train_labels, num_classes)  # [num_classes] bool
    if empty.any():
        _warn_empty_classes(folder / "train_y.npy", empty, label_range)
    return int(empty.sum())


def _warn_empty_classes(path: Path, empty: np.ndarray, label_range: tuple[int, int]) -> None:
    """empty: bool [num_classes], True for the classes without a training sample."""
    examples = ", ".join(str(c) for c in _first_true(empty, _EXAMPLES))
    _log.warning(
        "%s: %s of %s classes have no training sample (e.g. %s); if that is unexpected, look "
        "for a mistyped label (the highest is %s)",
        path,
        f"{int(empty.sum()):,}",
        f"{len(empty):,}",
        examples,
        f"{label_range[1]:,}",
    )


def _first_true(flags: np.ndarray, count: int) -> list[int]:
    """The positions of the first ``count`` True values of flags [n]."""
    found: list[int] = []
    for start in range(0, len(flags), _LABEL_BLOCK):
        block = np.flatnonzero(flags[start : start + _LABEL_BLOCK])[: count - len(found)]
        found += (block + start).tolist()
        if len(found) == count:
            break
    return found


def _feature_folder(folder: Path) -> Path:
    if not folder.exists():
        raise missing_path_error(folder, "feature folder")
    if not folder.is_dir():
        raise wrong_kind_error(folder, "feature folder", f"a folder with {', '.join(FILES)}")
    return folder


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise ValueError(f"missing feature file {path} (needs {', '.join(FILES)})") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot read {path} as a .npy array: {error}") from None
