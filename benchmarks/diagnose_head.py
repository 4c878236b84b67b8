"""Is a run's accuracy limited by its backbone or by its head?
Usage: diagnose_head.py RUN... | diagnose_head.py --swap RUN_A RUN_B

For each run folder (single-rank synthetic-catalogue run) it prints held-out top-1 of the trained
head and of a nearest-centroid classifier built from the same backbone (each class's mean
normalised embedding over the run's training samples): equal centroid accuracy with unequal head
accuracy puts the gap in the head. Then, by how often a class was seen in training, the mean norm
of its head row and the cosine between that row and the class centroid.

With ``--swap`` and two runs of the same data (say full and random), it prints held-out top-1
for each backbone with each head, which tells which part a sampled softmax loses accuracy in.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from megaclass.train.loop import load_trained

SEEN_BUCKETS = [(0, 0), (1, 3), (4, 20), (21, 200), (201, None)]


def _trained(run: Path):
    """(config, model) of a finished single-rank run, backbone in evaluation mode."""
    model, _ = load_trained(run)
    model.backbone.eval()
    return model.config, model


def _top1(model, backbone: torch.nn.Module, rows: torch.Tensor) -> float:
    """Held-out top-1 of ``backbone``'s embeddings against class rows [C, D] (by cosine)."""
    directions = F.normalize(rows.float(), dim=1)
    hits = total = 0
    for inputs, labels in model.dataset.eval_batches(1024):
        embeddings = F.normalize(backbone(inputs), dim=1)
        hits += int(((embeddings @ directions.t()).argmax(1) == labels).sum())
        total += len(labels)
    return hits / total


@torch.no_grad()
def swap(run_a: Path, run_b: Path) -> None:
    models = {run_a: _trained(run_a)[1], run_b: _trained(run_b)[1]}
    for backbone_run, backbone_model in models.items():
        for head_run, head_model in models.items():
            top1 = _top1(backbone_model, backbone_model.backbone, head_model.head.weight.detach())
            print(f"backbone of {backbone_run}, head of {head_run}: top-1 {top1:.4f}")


@torch.no_grad()
def diagnose(run: Path) -> None:
    config, model = _trained(run)
    data, num_classes = model.dataset, model.dataset.num_classes
    sums = torch.zeros(num_classes, config.model.embedding_dim)  # [C, D]
    seen = torch.zeros(num_classes)
    for step in range(config.train.steps):
        inputs, labels = data.train_batch(step, config.train.batch_size)
        sums.index_add_(0, labels, F.normalize(model.backbone(inputs), dim=1))
        seen += torch.bincount(labels, minlength=num_classes)
    centroids = F.normalize(sums, dim=1)
    rows = model.head.weight.detach().float()
    directions = F.normalize(rows, dim=1)
    head_top1 = _top1(model, model.backbone, rows)
    centroid_top1 = _top1(model, model.backbone, centroids)
    print(f"{run}: head top-1 {head_top1:.4f}, centroid top-1 {centroid_top1:.4f}")
    alignment = (centroids * directions).sum(1)
    norms = rows.norm(dim=1)
    for low, high in SEEN_BUCKETS:
        chosen = (seen >= low) & (seen <= (high if high is not None else float("inf")))
        label = f"{low}+" if high is None else f"{low}-{high}"
        print(
            f"  seen {label:>7} times: {int(chosen.sum()):>9,} classes, row norm "
            f"{norms[chosen].mean():.3f}, cos(row, centroid) {alignment[chosen].mean():.3f}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--swap"] and len(sys.argv) == 4:
        swap(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        for folder in sys.argv[1:]:
            diagnose(Path(folder))
