"""Step-by-step trace of a short run: the loss, the spread of the batch's embeddings, how aligned
the rows of the batch's classes are, how close each embedding is to its class's row, and the
backbone's gradient norm. The evidence behind docs/stability.md.

    PYTHONPATH=. python benchmarks/collapse_trace.py [KEY=VALUE ...]

(config overrides as ``megaclass train --set``; default: 5,000 balanced synthetic classes, 50
steps, fp32 products). Compare ``head.sampler=full`` with ``head.sampler=knn``, and
``model.backbone=benchmarks.backbones:mlp_without_batchnorm`` with the default MLP.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from megaclass.train import loop
from megaclass.train.config import load_config
from megaclass.train.health import embedding_spread

BASE = ["data.num_classes=5000", "data.zipf=0.0", "train.steps=50", "head.matmul_dtype='fp32'"]


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    unit = F.normalize(rows, dim=1)
    n = len(unit)
    return float((unit.sum(0).norm() ** 2 - n) / (n * (n - 1)))


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    config = load_config(None, [*BASE, *overrides])
    model = loop.build_model(config, None)
    backbone_opt = loop.build_backbone_optimizer(config, model.backbone)
    head_opt = loop.build_head_optimizer(config, model.head)
    opt = config.optim
    model.head.refresh_sampler()
    print("step loss cosine rank rows_cosine label_cosine backbone_grad")
    for step in range(config.train.steps):
        scale = loop._lr_scale(step, config.train.steps, opt.warmup_steps)
        for optimizer, base in ((backbone_opt, opt.lr), (head_opt, opt.head_lr or opt.lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * scale
        inputs, labels = model.dataset.train_batch(step, config.train.batch_size)
        embeddings = model.backbone(inputs)  # [B, D]
        out = model.head(embeddings, labels)
        backbone_opt.zero_grad()
        head_opt.zero_grad()
        out.loss.backward()
        with torch.no_grad():
            spread = embedding_spread(embeddings, None)
            rows = model.head.weight.detach()
            label_cosine = F.cosine_similarity(embeddings, rows[labels]).mean()
            grad = torch.cat([p.grad.reshape(-1) for p in model.backbone.parameters()]).norm()
        backbone_opt.step()
        head_opt.step()
        model.head.refresh_sampler()
        print(
            f"{step} {out.loss.item():.2f} {spread['embedding_cosine']:.3f} "
            f"{spread['embedding_rank']:.1f} {mean_pairwise_cosine(rows[labels.unique()]):.3f} "
            f"{float(label_cosine):.3f} {float(grad):.3f}",
            flush=True,
        )
    head_opt.catch_up()
    print(f"held-out: {model.task.evaluate(model)}")


if __name__ == "__main__":
    main(sys.argv[1:])
