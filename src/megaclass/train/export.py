"""``megaclass export``: a run's trained model in plain NumPy files, readable without megaclass.

OUT/
- ``class_weights.npy``: float32 [num_classes, dim], row i = class ``class_ids[i]``;
- ``class_ids.npy``: int64 [num_classes], the global class id of each row (0..num_classes-1);
- ``backbone.npz``: the backbone's ``state_dict``, one float32/int64 array per entry name;
- ``manifest.json``: step, shapes, the margin (whether embeddings and class weights are
  L2-normalised before scoring, and the scale), and the run's config.
Class weights are streamed shard by shard into a memory-mapped file, never held whole in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megaclass.train.checkpoint import latest_checkpoint, read_file
from megaclass.train.config import load_config, to_toml


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    config = load_config(str(run_dir / "config.toml"))
    folder = latest_checkpoint(run_dir)
    meta = json.loads((folder / "meta.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    num_classes, dim = meta["num_classes"], meta["embedding_dim"]
    weights = np.lib.format.open_memmap(
        out / "class_weights.npy", mode="w+", dtype=np.float32, shape=(num_classes, dim)
    )
    for path in sorted(folder.glob("head-*.pt")):
        shard = read_file(path, mmap=True)
        start, stop = shard["class_range"]
        weights[start:stop] = shard["weight"].float().numpy()
    weights.flush()
    np.save(out / "class_ids.npy", np.arange(num_classes, dtype=np.int64))
    common = read_file(folder / "common.pt", mmap=False)
    np.savez(out / "backbone.npz", **{k: v.cpu().numpy() for k, v in common["backbone"].items()})
    margin = config.head.build_margin()
    manifest = {
        "step": meta["step"],
        "num_classes": num_classes,
        "embedding_dim": dim,
        "normalize": margin.normalize,
        "scale": margin.scale,
        "margin": repr(margin),
        "backbone": config.model.backbone,
        "config_toml": to_toml(config),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
