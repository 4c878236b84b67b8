"""A user's workflow around training: load a trained run, predict, export, extend a run, see
the resolved configuration."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import megaclass
from megaclass.cli import _parser
from megaclass.train import load_config, resumed_config
from tests.distributed.harness import free_port, run_ranks
from tests.integration.helpers import (
    TINY,
    set_args,
    train_on_ranks,
    write_features,
)
from tests.integration.helpers import (
    megaclass as run_cli,
)


def _feature_run(tmp_path, steps=8):
    data = write_features(tmp_path / "data", num_classes=97)
    overrides = [
        *TINY,
        "data.source='features'",
        f"data.path='{data}'",
        "data.num_classes=97",
        f"train.steps={steps}",
        "checkpoint.every=4",
    ]
    return data, overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on feature files, trained once through the command line: (data, run)."""
    folder = tmp_path_factory.mktemp("trained")
    data, overrides = _feature_run(folder)
    run = folder / "run"
    result = run_cli("train", "--run-dir", str(run), *set_args(overrides))
    assert result.returncode == 0, result.stderr
    return data, run


def _accuracy(ids: torch.Tensor, labels: np.ndarray, k: int) -> float:
    return float((ids[:, :k] == torch.from_numpy(labels)[:, None]).any(dim=1).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_load_run_predicts_what_eval_scores(tmp_path, trained, world_size):
    data, run = trained
    if world_size == 2:
        run = tmp_path / "run"
        run_ranks(2, train_on_ranks, run, _feature_run(tmp_path)[1], False)
    evaluated = run_cli("eval", str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((run / "eval.json").read_text())
    eval_x, eval_y = np.load(data / "eval_x.npy"), np.load(data / "eval_y.npy")

    model = megaclass.load_run(run)  # on one process, whatever the run's world size
    found = model.predict(eval_x, k=5)
    assert found.ids.shape == found.scores.shape == (len(eval_y), 5)
    assert bool((found.scores[:, :-1] >= found.scores[:, 1:]).all())  # best first
    assert _accuracy(found.ids, eval_y, 1) == pytest.approx(metrics["top1"], abs=1e-6)
    assert _accuracy(found.ids, eval_y, 5) == pytest.approx(metrics["top5"], abs=1e-6)
    assert model.embed(eval_x[:7]).shape == (7, 32)

    out = tmp_path / "predicted.npy"
    predicted = run_cli(
        "predict", str(run), "--input", str(data / "eval_x.npy"), "--k", "5", "--output", str(out)
    )
    assert predicted.returncode == 0, predicted.stderr
    table = np.load(out)
    assert np.array_equal(table["ids"], found.ids.numpy())
    np.testing.assert_allclose(table["scores"], found.scores.numpy(), rtol=1e-5)

    export = tmp_path / "export"
    assert run_cli("export", str(run), str(export)).returncode == 0
    assert not list(export.glob("*.pt")) and (export / "backbone.safetensors").exists()
    exported = megaclass.load_run(export).predict(eval_x, k=5)
    assert torch.equal(exported.ids, found.ids)


def _sharded_predictions(group, folder, inputs, k):
    """``load_run`` sharded over ``group``: each rank predicts its half of ``inputs``."""
    model = megaclass.load_run(folder, group)
    rank = group.rank()
    mine = inputs[: len(inputs) // 2] if rank == 0 else inputs[len(inputs) // 2 :]
    return model.predict(mine, k=k, batch_size=50).ids


@pytest.mark.slow
def test_a_model_sharded_over_ranks_predicts_as_on_one_process(tmp_path, trained):
    data, run = trained
    eval_x = np.load(data / "eval_x.npy")
    whole = megaclass.load_run(run).predict(eval_x, k=3).ids
    halves = run_ranks(2, _sharded_predictions, run, eval_x, 3)
    assert torch.equal(torch.cat(halves), whole)

    jsonl = tmp_path / "top.jsonl"
    torchrun = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(free_port()), "-m", "megaclass", "predict", str(run),
            "--input", str(data / "eval_x.npy"), "--k", "3", "--output", str(jsonl),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [row["ids"] for row in rows] == whole.tolist()


def test_predict_refuses_bad_requests(tmp_path, trained):
    _, run = trained
    model = megaclass.load_run(run)
    with pytest.raises(ValueError, match=r"k must be in \[1, 97\]"):
        model.predict(np.zeros((2, 12), np.float32), k=98)
    with pytest.raises(ValueError, match=r"inputs must be \[N, 12\]"):
        model.predict(np.zeros((2, 11), np.float32))
    bad = np.zeros((3, 12), np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="input row 2 holds NaN"):
        model.predict(bad)
    with pytest.raises(ValueError, match="neither a run folder"):
        megaclass.load_run(tmp_path)
    result = run_cli("predict", str(run), "--input", str(tmp_path / "missing.npy"))
    assert result.returncode == 2 and "missing.npy is missing" in result.stderr


def test_extending_a_finished_run(tmp_path):
    _, overrides = _feature_run(tmp_path, steps=4)
    run = tmp_path / "run"
    assert run_cli("train", "--run-dir", str(run), *set_args(overrides)).returncode == 0

    again = run_cli("train", "--resume", str(run))
    assert again.returncode == 0 and "has finished" in again.stderr
    assert "samples/s" not in again.stderr

    with pytest.raises(ValueError, match=r"cannot change optim\.lr"):  # the CLI: exit 2 with it
        resumed_config(run, ["optim.lr=0.5"])

    longer = run_cli("train", "--resume", str(run), "--set", "train.steps=7")
    assert longer.returncode == 0, longer.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 7 and 5 in steps
    assert load_config(str(run / "config.toml")).train.steps == 7
    assert json.loads((run / "summary.json").read_text())["steps"] == 7


def test_config_prints_a_toml_that_loads_back_equal(tmp_path):
    overrides = ["train.steps=7", "head.sampler=ann", "head.ann.k=16", "name=mine"]
    result = run_cli("config", *set_args(overrides))
    assert result.returncode == 0, result.stderr
    keys = [line for line in result.stdout.splitlines() if " = " in line]
    assert keys and all("  # " in line for line in keys)  # every key explained
    path = tmp_path / "resolved.toml"
    path.write_text(result.stdout)
    assert load_config(str(path)) == load_config(None, overrides)


def test_version_and_every_argument_described():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"megaclass {megaclass.__version__}"

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    for parser in parsers(_parser()):
        for action in parser._actions:
            if action.dest not in ("help", "command", "bench"):
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"
