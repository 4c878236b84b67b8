"""megaclass train / eval / export end to end through the command line and the API."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megaclass.train import CheckpointError, NonFiniteLoss, load_config, train
from megaclass.train.loop import Trainer, build_model
from tests.distributed.harness import free_port, run_ranks
from tests.integration.helpers import (
    BATCH_INDEPENDENT,
    TINY,
    megaclass,
    resume_two_ranks_on_three,
    set_args,
    step_losses,
    train_on_ranks,
    write_features,
)


def test_tiny_default_run_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = megaclass("train", *set_args([*TINY, "train.steps=15"]), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert "held-out top-1" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["top1"] > 20 / 500  # chance is 1/500
    assert {"total_time_s", "mean_samples_per_s", "peak_rss_mb", "top5"} <= summary.keys()
    assert sorted(step_losses(run)) == list(range(1, 16))
    assert load_config(str(run / "config.toml")).train.steps == 15
    evaluated = megaclass("eval", str(run))
    assert evaluated.returncode == 0 and f"top1 {summary['top1']:.4f}" in evaluated.stdout
    again = megaclass("train", "--run-dir", str(run))
    assert again.returncode == 2 and f"--resume {run}" in again.stderr
    exported = megaclass("export", str(run), str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr
    weights = np.load(tmp_path / "export" / "class_weights.npy")
    assert weights.shape == (500, 32) and weights.dtype == np.float32
    assert np.array_equal(np.load(tmp_path / "export" / "class_ids.npy"), np.arange(500))
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["backbone"]["factory"] == "mlp" and manifest["num_classes"] == 500
    assert (tmp_path / "export" / "backbone.safetensors").is_file()


@pytest.mark.parametrize(
    "head",
    [
        [],
        ["head.sampler='random'", "head.random.rate=0.2"],
        ["head.sampler='knn'", "head.knn.budget=0.2", "head.knn.refresh_every=3", "head.knn.k=4"],
        ["head.sampler='knn'", "head.knn.build='ivf'", "optim.head_optimizer='rowadagrad'"],
        [
            "head.sampler='knn'",
            "head.knn.budget=0.2",
            "head.knn.frequent_share=0.5",
            "head.knn.walk_k=4",
        ],
    ],
    ids=["full-sgd", "random", "knn-exact", "knn-ivf-rowadagrad", "knn-frequent"],
)
def test_resume_equals_uninterrupted(tmp_path, head):
    config = load_config(
        None, [*TINY, *head, "train.steps=12", "checkpoint.every=5", "checkpoint.keep=5"]
    )
    train(config, tmp_path / "whole")
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "whole", partial)
    for later in ("step-00000010", "step-00000012"):
        shutil.rmtree(partial / "checkpoints" / later)
    lines = (partial / "metrics.jsonl").read_text().splitlines()[:5]
    (partial / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    train(config, partial, resume=True)
    assert step_losses(partial) == step_losses(tmp_path / "whole")  # bit for bit


def test_a_resumed_run_keeps_its_best_validation_and_its_patience(tmp_path):
    """At a learning rate too small to move top-1 much, the run stops early; resumed from a
    checkpoint between its best evaluation and its stop, it must stop at the same step with
    the same best (a resume that forgot them would restart the count from there)."""
    overrides = [*TINY, "train.steps=20", "train.eval_every=2", "train.patience=3"]
    overrides += ["optim.lr=1e-9", "checkpoint.every=10", "checkpoint.keep=5"]
    config = load_config(None, overrides)
    whole = train(config, tmp_path / "whole")
    assert whole["best"]["step"] < 10 < whole["steps"] < 20  # best, checkpoint, early stop
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "whole", partial)
    shutil.rmtree(partial / "checkpoints" / f"step-{whole['steps']:08d}")
    resumed = train(config, partial, resume=True)
    assert resumed["steps"] == whole["steps"] and resumed["best"] == whole["best"]


def test_two_ranks_equal_one_rank_for_20_steps(tmp_path):
    overrides = [*TINY, BATCH_INDEPENDENT, "train.steps=20"]
    run_ranks(1, train_on_ranks, tmp_path / "one", overrides, False)
    run_ranks(2, train_on_ranks, tmp_path / "two", overrides, False)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:  # fp32; only the order of summation differs
        assert two[step] == pytest.approx(one[step], rel=1e-4), step


def test_checkpoint_of_two_ranks_resumes_on_three(tmp_path):
    resume_two_ranks_on_three(tmp_path, [*TINY, BATCH_INDEPENDENT])


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config(
        None,
        [
            *TINY,
            "train.steps=10",
            "checkpoint.every=2",
            "model.backbone='tests.integration.backbones:nan_at_step_4'",
        ],
    )
    with pytest.raises(NonFiniteLoss, match=r"at step 3.*step-00000002"):
        train(config, tmp_path)
    assert (tmp_path / "checkpoints" / "step-00000002" / "meta.json").is_file()
    result = megaclass("eval", str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    result = megaclass("eval", str(tmp_path))
    assert result.returncode == 2 and "cannot read config" in result.stderr
    train(load_config(None, [*TINY, "train.steps=2"]), tmp_path)
    shard = next((tmp_path / "checkpoints").glob("step-*/head-*.pt"))
    shard.write_bytes(b"not a checkpoint")
    result = megaclass("eval", str(tmp_path))
    assert result.returncode == 2 and "is corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(load_config(None, [*TINY, "train.steps=2"]), tmp_path, resume=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=0", "train.steps must be >= 1"),
        ("head.margin='sphere'", "head.margin must be one of"),
        ("train.stepz=3", "unknown config key train.stepz"),
        ("optim.lr='fast'", "optim.lr must be float"),
    ],
)
def test_bad_config_values_are_reported(override, message, tmp_path):
    result = megaclass("train", "--set", override, "--run-dir", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_training_on_feature_files(tmp_path):
    write_features(tmp_path)
    overrides = [
        *TINY,
        "train.steps=40",
        "data.source='features'",
        f"data.path='{tmp_path}'",
        "data.num_classes=0",
    ]
    summary = train(load_config(None, overrides), tmp_path / "run")
    assert summary["num_classes"] == 50 and summary["top1"] > 0.2  # chance: 0.02


def test_bad_feature_files_are_reported_with_the_file_name(tmp_path):
    write_features(tmp_path)
    np.save(tmp_path / "train_y.npy", np.zeros(2000, dtype=np.int32))
    args = ["--set", "data.source=features", "--set", f"data.path={tmp_path}"]
    result = megaclass("train", *args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "train_y.npy: expected int64" in result.stderr
    np.save(tmp_path / "train_y.npy", np.full(2000, 99, dtype=np.int64))
    result = megaclass("train", *args, "--set", "data.num_classes=50", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "label 99 is outside [0, 50)" in result.stderr


def test_sigint_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    overrides = [*TINY, "train.steps=16", "model.backbone='tests.integration.backbones:slow'"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "megaclass",
            "train",
            *set_args(overrides),
            "--run-dir",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (tmp_path / "metrics.jsonl").is_file() or not step_losses(tmp_path):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted after step" in stderr
    saved = next((tmp_path / "checkpoints").glob("step-*"))
    resumed = megaclass("train", "--resume", str(tmp_path), timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {int(saved.name[5:])}" in resumed.stderr


def test_torchrun_runs_hybrid_parallel_and_reports_a_dead_rank(tmp_path):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "megaclass",
        "train",
    ]
    ok = subprocess.run(
        [*torchrun, *set_args([*TINY, "train.steps=4"]), "--run-dir", str(tmp_path / "ok")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["world_size"] == 2
    began = time.time()
    dead = subprocess.run(
        [
            *torchrun,
            *set_args(
                [
                    *TINY,
                    "train.steps=50",
                    "model.backbone='tests.integration.backbones:rank1_dies_at_step_3'",
                ]
            ),
            "--run-dir",
            str(tmp_path / "dead"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={"MEGACLASS_TIMEOUT_S": "30", **__import__("os").environ},
    )
    assert dead.returncode != 0
    assert time.time() - began < 120
    assert "rank" in dead.stderr and "1" in dead.stderr and "17" in dead.stderr


def test_knn_run_says_when_it_builds_the_class_graph(tmp_path):
    overrides = [*TINY, "head.sampler='knn'", "head.knn.refresh_every=5", "train.steps=12"]
    result = megaclass("train", *set_args(overrides), "--run-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for step in (0, 5, 10):
        assert f"step {step}: building the class graph (exact, 500 classes)" in result.stderr
    assert result.stderr.count("class graph built in") == 3
    assert json.loads((tmp_path / "summary.json").read_text())["graph_build_s"] > 0


def test_metrics_record_what_the_issue_asks(tmp_path):
    train(load_config(None, [*TINY, "train.steps=3", "train.eval_every=2"]), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "samples_per_s", "active_classes"} <= records[0].keys()
    assert "top1" in records[1] and records[1]["step"] == 2
    assert torch.isfinite(torch.tensor(records[-1]["top1"]))


@pytest.mark.parametrize(
    "optimizer, drawn_rows", [("sgd", "one_step"), ("rowadagrad", "corrected")]
)
def test_the_trainer_gives_the_head_the_drawn_row_gradient_its_row_optimizer_suits(
    tmp_path, optimizer, drawn_rows
):
    config = load_config(
        None, [*TINY, "head.sampler='random'", f"optim.head_optimizer='{optimizer}'"]
    )
    trainer = Trainer(config, tmp_path, build_model(config, None))
    assert trainer.model.head.drawn_rows == trainer.head_optimizer.DRAWN_ROWS == drawn_rows
    trainer.close()
