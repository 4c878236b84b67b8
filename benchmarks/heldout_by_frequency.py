"""Where a run's held-out errors are: top-1 by how often the true class was a positive during
training, and where the wrong predictions go.

    PYTHONPATH=. python benchmarks/heldout_by_frequency.py RUN_DIR [RUN_DIR ...]

Loads each run's newest checkpoint (single process), replays the labels of the steps it trained
to count each class's positives, and prints one table row per run (used in
``benchmarks/results/stability.md``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from megaclass.train.checkpoint import latest_checkpoint, load_checkpoint
from megaclass.train.config import load_config
from megaclass.train.loop import build_model

BUCKETS = {"never": (0, 0), "once": (1, 1), "2-5 times": (2, 5), "over 5": (6, None)}


def positives_seen(model, steps: int) -> torch.Tensor:
    """[num_classes] int64: how often each class was a training label in the first ``steps``."""
    seen = torch.zeros(model.head.num_classes, dtype=torch.int64)
    for step in range(steps):
        _, labels = model.dataset.train_batch(step, model.config.train.batch_size)
        seen += torch.bincount(labels.flatten(), minlength=len(seen))
    return seen


@torch.no_grad()
def predictions(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 class, label) of every held-out sample: [n], [n]."""
    model.backbone.eval()
    predicted, labels = [], []
    for inputs, batch_labels in model.dataset.eval_batches(1024):
        _, top = model.head.predict_topk(model.backbone(inputs), k=1)
        predicted.append(top[:, 0])
        labels.append(batch_labels)
    return torch.cat(predicted), torch.cat(labels)


def row(run: Path) -> str:
    config = load_config(str(run / "config.toml"))
    model = build_model(config, None)
    state, _ = load_checkpoint(latest_checkpoint(run), model.head)
    model.backbone.load_state_dict(state.backbone)
    seen = positives_seen(model, state.step)
    predicted, labels = predictions(model)
    correct = predicted == labels
    cells = [run.name, f"{correct.float().mean():.4f}"]
    for low, high in BUCKETS.values():
        count = seen[labels]
        mask = (count >= low) & (count <= (high if high is not None else count.max()))
        cells.append(f"{correct[mask].float().mean():.4f} ({mask.float().mean():.0%})")
    wrong = predicted[~correct]
    cells.append(f"{(seen[wrong] == 0).float().mean():.2%}")
    cells.append(f"{len(predicted.unique()):,}")
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(
        "| run | top-1 | "
        + " | ".join(f"top-1, class a positive {name} (share)" for name in BUCKETS)
        + " | wrong predictions to never-seen classes | distinct predictions |"
    )
    print("|---|" + "---:|" * (len(BUCKETS) + 3))
    for folder in sys.argv[1:]:
        print(row(Path(folder)), flush=True)
