"""``megaclass export`` and ``megaclass.load_run``: a run's newest checkpoint as a model.

``export_run`` writes an export folder (``megaclass.inference``: manifest, backbone
safetensors, class rows as ``.npy``), readable without the run's configuration or data, the
class rows streamed shard by shard, never all in memory. ``load_run`` loads a run folder or an
export folder as a ``TrainedModel``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.distributed as dist

from megaclass.index.faiss_engines import faiss_available
from megaclass.inference import (
    INDEX_KINDS,
    ModelDescription,
    TrainedModel,
    load_export,
    read_description,
    write_export,
    write_search_index,
)
from megaclass.train.checkpoint import latest_checkpoint, load_checkpoint, read_file


def export_run(run_dir: str | Path, out: str | Path, index: str = "auto") -> Path:
    """Write the newest checkpoint of ``run_dir`` as an export folder ``out`` with the search
    index ``megaclass serve`` uses: ``"hnsw"`` (faiss's float HNSW), ``"binary_graph"``,
    ``"none"`` (served by exact search), or ``"auto"``: the HNSW, which measured fastest at
    recall@10 >= 0.95 (``benchmarks/results/index.md``), for a head that scores by cosine
    when faiss is installed, else none."""
    if index not in INDEX_KINDS:
        raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
    run_dir = Path(run_dir)
    description = _run_description(run_dir)
    folder = latest_checkpoint(run_dir)
    meta = json.loads((folder / "meta.json").read_text())

    def class_rows(weights: np.ndarray) -> None:
        for path in sorted(folder.glob("head-*.pt")):
            shard = read_file(path, mmap=True)
            start, stop = shard["class_range"]
            weights[start:stop] = shard["weight"].float().numpy()

    backbone = read_file(folder / "common.pt", mmap=False)["backbone"]
    written = write_export(out, description, meta["step"], backbone, class_rows)
    if index == "auto":
        index = "hnsw" if description.normalize and faiss_available() else "none"
    if index != "none":
        write_search_index(written, index)
    return written


def load_run(path: str | Path, group: dist.ProcessGroup | None = None, device=None) -> TrainedModel:
    """The model of a run folder (its newest checkpoint, saved at any world size) or of an
    export folder, for ``predict`` and ``embed``: on this process, or with the class rows
    sharded over ``group`` (every rank of it calls ``load_run``)."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return load_export(path, group, device)
    if not (path / "checkpoints").is_dir():
        raise ValueError(
            f"{path} is neither a run folder (with checkpoints/) nor an export (manifest.json)"
        )
    model = TrainedModel(_run_description(path), group, device)
    state, _ = load_checkpoint(latest_checkpoint(path), model.head)
    model.backbone.load_state_dict(state.backbone)
    return model


def _run_description(run_dir: Path) -> ModelDescription:
    path = run_dir / "model.json"
    if not path.exists():
        raise ValueError(
            f"{path} is missing: the run predates it; resume the run once "
            f"(megaclass train --resume {run_dir}) to write it"
        )
    return ModelDescription.from_json(read_description(path), str(path))
