"""What differs between kinds of data in training: how a model is evaluated, which score picks
the best checkpoint, and how a result reads. One object per kind; the loop asks it and never
looks at the data set's type."""

from __future__ import annotations

import abc

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaclass.data.seqrec import NO_TARGET, ranking_sums
from megaclass.distributed import shard_range


class Task(abc.ABC):
    """How a run of one kind of data is evaluated and reported."""

    splits: tuple[str, ...] = ("valid",)  # evaluated at the end and for the best model

    @abc.abstractmethod
    def evaluate(self, model, split: str = "valid", batch_size: int = 1024) -> dict:
        """Metrics of ``model`` on ``split`` by exact full-softmax ranking (collective)."""

    @abc.abstractmethod
    def score(self, metrics: dict) -> float:
        """The validation score that early stopping and the best model follow."""

    @abc.abstractmethod
    def headline(self, metrics: dict) -> str:
        """One line for the log."""

    def evaluate_all(self, model) -> dict:
        """The metrics of every split in ``splits``."""
        return {k: v for split in self.splits for k, v in self.evaluate(model, split).items()}

    def epochs(self, model, steps: int) -> dict:
        """``{"epochs": passes over the training data}`` after ``steps``, where it has epochs."""
        return {}


class Classification(Task):
    """Held-out top-1 / top-5 over every class."""

    def evaluate(self, model, split: str = "valid", batch_size: int = 1024) -> dict:
        correct1 = correct5 = total = 0
        for top, labels in ranked(model, model.dataset.eval_batches(batch_size), k=5):
            hits = top == labels[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(1).sum())
            total += len(labels)
        correct1, correct5, total = _summed_over_ranks([correct1, correct5, total], model)
        return {"top1": correct1 / total, "top5": correct5 / total, "eval_samples": int(total)}

    def score(self, metrics: dict) -> float:
        return metrics["top1"]

    def headline(self, metrics: dict) -> str:
        return (
            f"held-out top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} "
            f"({metrics['eval_samples']:,} samples)"
        )


class NextItem(Task):
    """Next-item ranking: HIT@5/10/20 and NDCG@5/10/20 of ``split`` ("valid" or "test") by
    full ranking (every item a candidate, padding never): keys ``{split}_hit@k``,
    ``{split}_ndcg@k``, ``{split}_samples``; the best model is the one of best valid NDCG@10,
    reported with its test metrics."""

    splits = ("valid", "test")

    def evaluate(self, model, split: str = "valid", batch_size: int = 1024) -> dict:
        sums: dict[str, float] = {}
        for top, labels in ranked(model, model.dataset.eval_batches(batch_size, split), k=20):
            for name, value in ranking_sums(top.cpu(), labels.cpu()).items():
                sums[name] = sums.get(name, 0.0) + value
        totals = dict(zip(sums, _summed_over_ranks(list(sums.values()), model), strict=True))
        count = totals.pop("count")
        return {
            **{f"{split}_{name}": total / count for name, total in totals.items()},
            f"{split}_samples": int(count),
        }

    def score(self, metrics: dict) -> float:
        return metrics["valid_ndcg@10"]

    def headline(self, metrics: dict) -> str:
        return ", ".join(
            f"{split} HIT@10 {metrics[f'{split}_hit@10']:.4f} "
            f"NDCG@10 {metrics[f'{split}_ndcg@10']:.4f}"
            for split in self.splits
            if f"{split}_hit@10" in metrics
        )

    def epochs(self, model, steps: int) -> dict:
        windows = len(model.dataset.train.labels)
        return {"epochs": steps * model.config.train.batch_size / windows}


def ranked(model, batches, k: int):
    """This rank's share of each held-out batch: (its best k classes over all shards [n, k],
    labels [n]; -1 in the ranks past the last class when there are fewer than k), with the
    backbone in eval mode meanwhile."""
    backbone, head = model.backbone, model.head
    device = head.weight.device
    backbone.eval()
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                rows = slice(*shard_range(len(labels), head.world_size, head.rank))
                embeddings, mine = prediction_rows(
                    backbone(inputs[rows].to(device)), labels[rows].to(device)
                )
                _, top = head.predict_topk(embeddings, k=min(k, head.num_classes))
                yield F.pad(top, (0, k - top.shape[1]), value=-1), mine
    finally:
        backbone.train()


def prediction_rows(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's output and the labels as the head takes them: [n, D], [n]. A sequence
    backbone's output [B, L, D] keeps the positions with a target (training windows, labels
    [B, L]) or the last position (evaluation, labels [B])."""
    if embeddings.dim() == 2:
        return embeddings, labels
    if labels.dim() == 2:
        keep = labels != NO_TARGET  # [B, L]
        return embeddings[keep], labels[keep]
    return embeddings[:, -1], labels


def _summed_over_ranks(values: list[float], model) -> list[float]:
    """Each value summed over the ranks (one all_reduce of [len(values)] fp64)."""
    totals = torch.tensor(values, dtype=torch.float64)
    if model.group is not None:
        dist.all_reduce(totals, group=model.group)
    return totals.tolist()
