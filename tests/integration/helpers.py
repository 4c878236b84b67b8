"""Tiny runs for the integration tests: seconds each on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megaclass.train import load_config, train
from tests.distributed.harness import run_ranks

TINY = [
    "head.sampler='full'",  # most tests compare with the exact softmax (the default is knn)
    "data.num_classes=500",
    "data.input_dim=16",
    "data.eval_samples=256",
    "model.embedding_dim=32",
    "model.hidden_dim=64",
    "train.batch_size=64",
    "train.log_every=1",
    "train.threads=1",
    "head.chunk_size=128",
    "head.matmul_dtype='fp32'",
    "optim.warmup_steps=2",
    "optim.lr=0.05",
]

# The default MLP's BatchNorm normalises each rank's share of the batch (as DDP without
# SyncBatchNorm, which is GPU-only), so runs at different world sizes agree only on a backbone
# whose output does not depend on the rest of the batch.
BATCH_INDEPENDENT = "model.backbone='benchmarks.backbones:mlp_without_batchnorm'"


def megaclass(*args, timeout=240, env=None):
    return subprocess.run(
        [sys.executable, "-m", "megaclass", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def set_args(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def train_on_ranks(group, run_dir, overrides, resume):
    """``train`` on one rank of ``run_ranks``; held-out top-1."""
    return train(load_config(None, overrides), run_dir, resume=resume)["top1"]


def resume_two_ranks_on_three(tmp_path: Path, overrides: list[str]) -> tuple[Path, Path]:
    """Train 10 steps on 2 ranks (checkpoints every 5), then resume its step-5 checkpoint on 3
    ranks to step 10, and check that steps 6-10 have the same losses on both: the two run
    folders."""
    overrides = [*overrides, "train.steps=10", "checkpoint.every=5", "checkpoint.keep=5"]
    two, three = tmp_path / "two", tmp_path / "three"
    run_ranks(2, train_on_ranks, two, overrides, False)
    shutil.copytree(two, three)
    shutil.rmtree(three / "checkpoints" / "step-00000010")
    (three / "metrics.jsonl").write_text(
        "\n".join((three / "metrics.jsonl").read_text().splitlines()[:5]) + "\n"
    )
    run_ranks(3, train_on_ranks, three, overrides, True)
    two_losses, three_losses = step_losses(two), step_losses(three)
    for step in range(6, 11):
        assert three_losses[step] == pytest.approx(two_losses[step], rel=1e-4), step
    return two, three


def write_features(folder: Path, num_classes=50, rows=2000, dim=12) -> Path:
    """Feature files of ``num_classes`` Gaussian clusters (300 held-out rows) in ``folder``."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
    for split, n in (("train", rows), ("eval", 300)):
        y = rng.integers(0, num_classes, n).astype(np.int64)
        x = (centres[y] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", y)
    return folder
