"""Checkpoints: only complete folders count; shards reload at another world size."""

import json

import pytest
import torch

import megaclass
from megaclass.train.checkpoint import (
    CheckpointError,
    HeadShard,
    TrainingState,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _save(run_dir, step, head, keep=3):
    state = TrainingState(
        step, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {"steps_since_graph": 3}
    )
    rows = {
        "optim.momentum_buffer": torch.full_like(head.weight, step),
        "sampler.graph": torch.arange(head.class_range[0], head.class_range[1])[:, None].int(),
    }
    shard = HeadShard(rows, {"sampler.generator": head.sampler.generator.get_state()})
    return save_checkpoint(run_dir, state, head, shard, keep)


def test_half_written_folders_are_never_loaded(tmp_path):
    head = megaclass.ClassifierHead(50, 4)
    _save(tmp_path, 1, head)
    (tmp_path / "checkpoints" / "step-00000009.tmp").mkdir()  # a crash while writing
    (tmp_path / "checkpoints" / "step-00000008").mkdir()  # renamed but no meta.json
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_only_the_newest_are_kept(tmp_path):
    head = megaclass.ClassifierHead(50, 4)
    for step in range(1, 6):
        _save(tmp_path, step, head, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000004", "step-00000005"]


def test_weights_row_state_and_generator_round_trip(tmp_path):
    head = megaclass.ClassifierHead(50, 4, sampler=megaclass.samplers.Random(0.5), seed=1)
    head.sampler.generator.manual_seed(123)
    folder = _save(tmp_path, 7, head)
    other = megaclass.ClassifierHead(50, 4, seed=2)
    state, shard = load_checkpoint(folder, other)
    assert state.step == 7 and torch.equal(other.weight, head.weight)
    assert state.head == {"steps_since_graph": 3}
    assert torch.equal(shard.rows["optim.momentum_buffer"], torch.full_like(head.weight, 7))
    assert torch.equal(shard.rows["sampler.graph"], torch.arange(50)[:, None].int())
    assert torch.equal(shard.rank_state["sampler.generator"], head.sampler.generator.get_state())


def test_mismatched_and_unknown_checkpoints_are_refused(tmp_path):
    folder = _save(tmp_path, 1, megaclass.ClassifierHead(50, 4))
    with pytest.raises(CheckpointError, match="holds 50 classes x 4 dims"):
        load_checkpoint(folder, megaclass.ClassifierHead(60, 4))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(folder, megaclass.ClassifierHead(50, 4))
