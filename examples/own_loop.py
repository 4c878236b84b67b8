"""megaclass's head in your own training loop: a data-parallel backbone and a class-sharded head.

    python examples/own_loop.py                               # one process
    torchrun --nproc-per-node 2 examples/own_loop.py          # two ranks on this machine (gloo)

Each rank reads its own samples, runs the backbone under DistributedDataParallel and hands its
embeddings to the head, which holds 1/world_size of the class rows and computes the exact
cross-entropy over every rank's batch (see ``docs/own-loop.md``). The data here is a toy: each
class is a random point in input space, its samples that point plus noise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import megaclass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512, help="per rank")
    parser.add_argument("--out", default="runs/own-loop", help="where each rank saves its state")
    args = parser.parse_args()

    group = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
        dist.init_process_group("gloo")  # "nccl" on GPUs
        group = dist.group.WORLD
    rank = dist.get_rank() if group else 0
    torch.manual_seed(0)  # the same class points and backbone initialisation on every rank
    centres = torch.randn(args.classes, 32)

    backbone = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 64), nn.BatchNorm1d(64)
    )  # BatchNorm1d on the embedding keeps a sampled softmax from collapsing (docs/stability.md)
    if group is not None:
        backbone = DistributedDataParallel(backbone, process_group=group)
    head = megaclass.ClassifierHead(
        args.classes,
        64,
        margin=megaclass.margins.CosFace(scale=32.0, margin=0.2),
        sampler=megaclass.samplers.KNN(budget=0.1),  # 10% of the classes scored per step
        process_group=group,  # the classes are sharded over it
        seed=0,
    )
    backbone_opt = torch.optim.SGD(backbone.parameters(), lr=0.2, momentum=0.9)
    head_opt = megaclass.optim.SparseSGD(head, lr=0.2)  # the trainer's momentum and row norm

    generator = torch.Generator().manual_seed(1 + rank)  # each rank draws its own samples
    head.refresh_sampler()  # builds the class graph: before the first step
    for step in range(args.steps):
        labels = torch.randint(0, args.classes, (args.batch,), generator=generator)
        inputs = centres[labels] + 0.3 * torch.randn(args.batch, 32, generator=generator)
        out = head(backbone(inputs), labels)  # the loss over every rank's batch
        backbone_opt.zero_grad()
        head_opt.zero_grad()
        out.loss.backward()
        backbone_opt.step()
        head_opt.step()
        head.refresh_sampler()  # after each optimizer step: the graph is rebuilt when due
        if rank == 0 and step % 50 == 0:
            print(f"step {step}: loss {out.loss.item():.3f}, {out.num_active} classes scored")

    head_opt.catch_up()  # rows that missed steps brought up to date: before evaluating or saving
    backbone.eval()
    with torch.no_grad():
        labels = torch.randint(0, args.classes, (1000,), generator=generator)
        inputs = centres[labels] + 0.3 * torch.randn(1000, 32, generator=generator)
        _, top = head.predict_topk(backbone(inputs), k=5)  # exact, over every shard
    top1 = (top[:, 0] == labels).float().mean().item()
    if rank == 0:
        print(f"held-out top-1 {top1:.3f}")

    # each rank saves its own state: its class rows, the optimizer's rows, the sampler's graph
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "head": head.state_dict(),
            "head_optimizer": head_opt.state_dict(),
            "sampler": head.sampler.state_dict(),
            "backbone": backbone.state_dict(),
        },
        out_dir / f"rank-{rank}-of-{head.world_size}.pt",
    )
    if group is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
