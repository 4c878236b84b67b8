"""Next-item recommendation data (``SeqRec``) and full-ranking metrics.

Files (see ../shared/data/README.md), item and user ids from 1:
- ``users``: one line per user, ``user item item ...``, items in time order;
- ``interactions``: one line per interaction, ``user item``, each user's lines in time order.
``format="auto"`` takes ``interactions`` when every line has exactly two ids and some user has
more than one line, ``users`` otherwise.

Leave-one-out split per user with items ``s_1 .. s_n`` (n >= 3): test target ``s_n`` (history
``s_1 .. s_n-1``), validation target ``s_n-1`` (history ``s_1 .. s_n-2``), and every earlier
prefix is a training example: target ``s_t`` with history ``s_1 .. s_t-1``, t = 2 .. n-2.
Histories keep their last ``max_len`` items and are left-padded with 0, the padding id.

Training examples come as windows, as SASRec trains: one window holds up to ``max_len``
consecutive items ``s_a .. s_b`` as input and, at each position, the next item as target, so a
causal encoder scores ``b - a + 1`` prefixes in one pass over ``max_len`` positions instead of
one pass per prefix. A user's training sequence ``s_1 .. s_n-2`` is cut into windows from its
end, so every target ``s_2 .. s_n-2`` appears exactly once; a target in an earlier window of a
user with more than ``max_len`` training items sees only the history inside its window.

Classes are items: item ``i`` is class ``i - 1`` (``num_classes`` = the largest item id, or a
larger count given to ``SeqRec``), so padding is never a class and never a candidate; a target
may be any item, including one the user saw before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from megaclass.data.paths import missing_path_error, wrong_kind_error

FORMATS = ("auto", "users", "interactions")
SPLITS = ("valid", "test")
_MIN_ITEMS = 3  # a test target, a validation target and one history item


NO_TARGET = -1  # the label of a window position without a next item (padding)


@dataclass(frozen=True)
class Examples:
    """histories [N, max_len] int64 item ids (0 = padding, most recent last); labels [N] classes
    (evaluation: the next item after each history) or [N, max_len] (training windows: the class
    of the next item after each position, ``NO_TARGET`` at padding)."""

    histories: torch.Tensor
    labels: torch.Tensor


class SeqRec:
    """A sequential recommendation data set split leave-one-out (see the module docstring).

    Like the other data sets it gives ``num_classes``, ``train_batch(step, batch_size, rows)``
    (``batch_size`` windows: histories [n, max_len], labels [n, max_len]; each epoch visits the
    windows in a seeded order) and ``eval_batches(batch_size, split)`` (histories [n, max_len],
    labels [n]). Users with fewer than 3 items are left out (``num_short_users`` counts them).
    ``num_classes``: 0 (default) takes the largest item id; given, no item id may exceed it.
    """

    def __init__(
        self,
        path: str | Path,
        max_len: int = 50,
        file_format: str = "auto",
        seed: int = 0,
        num_classes: int = 0,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0: the largest item id), got {num_classes}"
            )
        if file_format not in FORMATS:
            raise ValueError(f"file_format must be one of {FORMATS}, got {file_format!r}")
        self.path = Path(path)
        self.max_len = max_len
        self.input_dim = max_len  # the width of an input (a history of item ids)
        self._seed = seed
        sequences = read_sequences(self.path, file_format)
        self.num_users = len(sequences)
        self.num_classes = _item_count(self.path, sequences, num_classes)
        kept = [items for items in sequences.values() if len(items) >= _MIN_ITEMS]
        self.num_short_users = len(sequences) - len(kept)
        if not kept:
            raise ValueError(f"{self.path}: no user has {_MIN_ITEMS} or more items")
        self.train = self._windows(items[:-2] for items in kept)
        self.valid = self._examples((items[:-2], items[-2]) for items in kept)
        self.test = self._examples((items[:-1], items[-1]) for items in kept)
        self._order: tuple[int, torch.Tensor] | None = None

    def train_batch(
        self, step: int, batch_size: int, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` of global training batch ``step`` (windows): histories [n, max_len],
        labels [n, max_len]."""
        n = len(self.train.labels)
        index = torch.arange(step * batch_size, (step + 1) * batch_size)[rows]
        epochs = index // n
        positions = torch.empty_like(index)
        for epoch in epochs.unique().tolist():
            at = epochs == epoch
            positions[at] = self._epoch_order(epoch)[index[at] % n]
        return self.train.histories[positions], self.train.labels[positions]

    def eval_batches(
        self, batch_size: int, split: str = "valid"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation or test examples in order: histories [n, max_len], labels [n]."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        examples = self.valid if split == "valid" else self.test
        for start in range(0, len(examples.labels), batch_size):
            stop = start + batch_size
            yield examples.histories[start:stop], examples.labels[start:stop]

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.train.labels), generator=generator))
        return self._order[1]

    def _windows(self, sequences) -> Examples:
        histories, labels = [], []
        for items in sequences:
            for end in range(len(items) - 1, 0, -self.max_len):
                start = max(0, end - self.max_len)
                padding = self.max_len - (end - start)
                histories.append([0] * padding + items[start:end])
                labels.append(
                    [NO_TARGET] * padding + [item - 1 for item in items[start + 1 : end + 1]]
                )
        return Examples(
            torch.tensor(histories, dtype=torch.int64).view(-1, self.max_len),
            torch.tensor(labels, dtype=torch.int64).view(-1, self.max_len),
        )

    def _examples(self, pairs) -> Examples:
        histories, labels = [], []
        for history, target in pairs:
            recent = history[-self.max_len :]
            histories.append([0] * (self.max_len - len(recent)) + recent)
            labels.append(target - 1)
        return Examples(
            torch.tensor(histories, dtype=torch.int64).view(-1, self.max_len),
            torch.tensor(labels, dtype=torch.int64),
        )


def _item_count(path: Path, sequences: dict[int, list[int]], num_classes: int) -> int:
    """The number of classes: the largest item id, or ``num_classes`` when given (checked)."""
    largest = max(max(items) for items in sequences.values())
    if num_classes and largest > num_classes:
        raise ValueError(
            f"{path}: item {largest} is beyond num_classes = {num_classes} (items are 1 to "
            "num_classes; 0 takes the largest item id)"
        )
    return num_classes or largest


def read_sequences(path: Path, file_format: str = "auto") -> dict[int, list[int]]:
    """Each user's items in time order, from either file format; ``ValueError`` naming the file
    and line for a malformed line, an id < 1 or a user line without items, and for a path that
    does not exist."""
    path = Path(path)
    if not path.exists():
        raise missing_path_error(path, "sequence file")
    if not path.is_file():
        raise wrong_kind_error(path, "sequence file", "a file of user or interaction lines")
    rows = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                ids = [int(field) for field in fields]
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: expected integer ids, got {line.strip()!r}"
                ) from None
            bad = [i for i in ids if i < 1]
            if bad:
                raise ValueError(f"{path}:{number}: id {bad[0]} is out of range (ids start at 1)")
            if len(ids) == 1:
                raise ValueError(f"{path}:{number}: user {ids[0]} has no items")
            rows.append((number, ids))
    if not rows:
        raise ValueError(f"{path}: no interactions")
    if file_format == "auto":
        pairs_only = all(len(ids) == 2 for _, ids in rows)
        repeated = len({ids[0] for _, ids in rows}) < len(rows)
        file_format = "interactions" if pairs_only and repeated else "users"
    sequences: dict[int, list[int]] = {}
    for number, ids in rows:
        if file_format == "interactions":
            if len(ids) != 2:
                raise ValueError(f"{path}:{number}: expected 'user item', got {len(ids)} ids")
            sequences.setdefault(ids[0], []).append(ids[1])
        elif ids[0] in sequences:
            raise ValueError(f"{path}:{number}: user {ids[0]} appears on a second line")
        else:
            sequences[ids[0]] = ids[1:]
    return sequences


def ranking_sums(
    top_classes: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (5, 10, 20)
) -> dict[str, float]:
    """Sums of HIT@k and NDCG@k over a batch, from each example's best classes over the whole
    catalogue (full ranking), best first.

    top_classes [n, K] (K >= max(ks)), labels [n] -> {"hit@k": sum, "ndcg@k": sum, "count": n}.
    A target's rank is its position in the list (0 = first; K if absent); NDCG@k =
    1 / log2(rank + 2) when rank < k, else 0 (one relevant item).
    """
    if top_classes.shape[1] < max(ks):
        raise ValueError(f"need the best {max(ks)} classes, got {top_classes.shape[1]}")
    found = top_classes == labels[:, None]  # [n, K]
    rank = torch.where(found.any(1), found.int().argmax(1), top_classes.shape[1])  # [n]
    sums = {"count": float(len(labels))}
    for k in ks:
        hit = rank < k
        sums[f"hit@{k}"] = float(hit.sum())
        sums[f"ndcg@{k}"] = float((hit / torch.log2(rank.double() + 2)).sum())
    return sums
