"""Checkpoints that load at any world size, written atomically.

Layout of ``RUN_DIR/checkpoints/step-00000100/``:
- ``meta.json``: step, world size, number of classes, the class range of every shard, and the
  training loop's own state (early stopping's best validation so far);
- ``common.pt``: backbone and backbone-optimizer state (identical on every rank; rank 0 writes it);
- ``head-00001-of-00003.pt``: one per rank: its class range, weight rows, every other per-class
  row state (optimizer state such as momentum or AdaGrad accumulators, a sampler's graph or
  label counts), keyed by name, and the rank's own state (the sampler's generator).

All ranks write into ``step-00000100.tmp``; once every rank is done, rank 0 writes ``meta.json``
and renames the folder. A crash at any point leaves the previous complete checkpoint untouched;
folders without ``meta.json`` or still named ``.tmp`` are never loaded. Loading at another world
size copies each rank's class rows (weights and row state alike) out of whichever saved shards
hold them. A rank's own state is restored only at the same world size (at another one each rank
keeps its fresh generator: the run continues exactly, but not bit for bit). The checkpoint does
not know what the rows are: the training loop names them (``train.loop``), from what the
optimizer and the sampler declare in their state.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from megaclass.heads import ClassifierHead

_FORMAT = 3


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds besides the head rows: the step and replicated state."""

    step: int
    backbone: dict
    backbone_optimizer: dict
    head: dict  # the head's state that is the same on every rank (optimizer, sampler)
    loop: dict = field(default_factory=dict)  # the loop's own (JSON: early stopping's record)


@dataclass(frozen=True)
class HeadShard:
    """This rank's per-class state: rows named like ``"optim.momentum_buffer"``, each
    [num_local, ...] (the weights themselves live in the head), and its own state (restored only
    at the same world size)."""

    rows: dict[str, torch.Tensor]
    rank_state: dict[str, torch.Tensor] = field(default_factory=dict)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted((p for p in done if (p / "meta.json").is_file()), key=lambda p: p.name)


def save_checkpoint(
    run_dir: str | Path,
    state: TrainingState,
    head: ClassifierHead,
    shard: HeadShard,
    keep: int,
) -> Path:
    """Write a checkpoint of ``state`` and this rank's head shard; collective over the head's group.

    Collectives on ``head.process_group``: three barriers.
    """
    group, rank, world_size = head.process_group, head.rank, head.world_size
    final = Path(run_dir) / "checkpoints" / f"step-{state.step:08d}"
    staging = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier(group)
    saved = {
        "class_range": head.class_range,
        "weight": head.weight.detach().cpu(),
        "rows": {name: rows.cpu() for name, rows in shard.rows.items()},
        "rank_state": shard.rank_state,
    }
    _save(saved, staging / _shard_name(rank, world_size))
    if rank == 0:
        common = {
            "backbone": state.backbone,
            "backbone_optimizer": state.backbone_optimizer,
            "head": state.head,
        }
        _save(common, staging / "common.pt")
    _barrier(group)
    if rank == 0:
        meta = {
            "format": _FORMAT,
            "step": state.step,
            "world_size": world_size,
            "num_classes": head.num_classes,
            "embedding_dim": head.embedding_dim,
            "loop": state.loop,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(group)
    return final


def load_checkpoint(folder: str | Path, head: ClassifierHead) -> tuple[TrainingState, HeadShard]:
    """Load a checkpoint folder into ``head`` (any world size); returns the rest of the state and
    this rank's row state (on the head's device)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta["num_classes"] != head.num_classes or meta["embedding_dim"] != head.embedding_dim:
        raise CheckpointError(
            f"{folder} holds {meta['num_classes']} classes x {meta['embedding_dim']} dims, the "
            f"model has {head.num_classes} x {head.embedding_dim}"
        )
    start, stop = head.class_range
    weight = torch.empty(stop - start, head.embedding_dim)
    rows: dict[str, torch.Tensor] = {}
    rank_state: dict[str, torch.Tensor] = {}
    for saved_rank in range(meta["world_size"]):
        shard = read_file(folder / _shard_name(saved_rank, meta["world_size"]), mmap=True)
        if meta["world_size"] == head.world_size and saved_rank == head.rank:
            rank_state = shard["rank_state"]
        lo, hi = shard["class_range"]
        a, b = max(lo, start), min(hi, stop)
        if a >= b:
            continue
        weight[a - start : b - start] = shard["weight"][a - lo : b - lo]
        for name, saved in shard["rows"].items():
            if name not in rows:
                rows[name] = saved.new_zeros((stop - start, *saved.shape[1:]))
            rows[name][a - start : b - start] = saved[a - lo : b - lo]
    with torch.no_grad():
        head.weight.copy_(weight)
    common = read_file(folder / "common.pt", mmap=False)
    state = TrainingState(
        step=meta["step"],
        backbone=common["backbone"],
        backbone_optimizer=common["backbone_optimizer"],
        head=common["head"],
        loop=meta.get("loop", {}),  # checkpoints from before it have none
    )
    rows = {name: tensor.to(head.weight.device) for name, tensor in rows.items()}
    return state, HeadShard(rows, rank_state)


def latest_checkpoint(run_dir: str | Path) -> Path:
    found = checkpoint_dirs(run_dir)
    if not found:
        raise CheckpointError(f"no complete checkpoint in {Path(run_dir) / 'checkpoints'}")
    return found[-1]


def _shard_name(rank: int, world_size: int) -> str:
    return f"head-{rank:05d}-of-{world_size:05d}.pt"


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a complete checkpoint (no meta.json)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / 'meta.json'} is unreadable: {error}") from None
    if meta.get("format") != _FORMAT:
        raise CheckpointError(
            f"{folder} has checkpoint format {meta.get('format')}; this megaclass reads format "
            f"{_FORMAT} (resume it with the version that wrote it)"
        )
    return meta


def _save(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def read_file(path: Path, mmap: bool):
    """One file of a checkpoint, tensors on CPU (memory-mapped if ``mmap``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint file {path} is corrupt: {error}") from None


def _barrier(group) -> None:
    if group is not None:
        dist.barrier(group=group)
