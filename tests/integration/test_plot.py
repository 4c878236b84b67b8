"""Looking at runs: ``megaclass plot`` and ``train.tensorboard``, end to end."""

import json
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megaclass import cli
from megaclass.train import load_config, train
from megaclass.train.plot import panel_keys, plot_runs, read_metrics, series
from tests.integration.helpers import TINY, megaclass, set_args

RUN = [*TINY, "train.steps=4", "train.eval_every=2"]
NEXT_ITEM_RECORDS = [
    {"step": 1, "loss": 9.0, "samples_per_s": 100.0, "active_classes": 50},
    {"step": 2, "loss": 8.0, "samples_per_s": 120.0, "active_classes": 50},
    {"step": 2, "valid_hit@10": 0.2, "valid_ndcg@10": 0.1, "valid_samples": 7},
    {"step": 2, "test_hit@10": 0.3, "test_ndcg@10": 0.15, "test_samples": 7},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs trained through the command line at different learning rates, evaluated
    at steps 2 and 4; the first also writes TensorBoard scalars."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("first", ["train.tensorboard=true"]), ("second", ["optim.lr=0.1"])):
        result = megaclass("train", *set_args([*RUN, *extra]), "--run-dir", str(root / name))
        assert result.returncode == 0, result.stderr
    return root / "first", root / "second"


def write_run(folder, records):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_plot_draws_every_run_in_a_colour_of_its_own(runs, tmp_path):
    out = tmp_path / "plots" / "runs.png"
    result = megaclass("plot", *map(str, runs), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    image = imread(out)  # RGBA floats in [0, 1]
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.01  # drawn on, not a blank canvas
    for colour in ("C0", "C1"):  # the first run's lines and the second's
        assert (np.abs(rgb - to_rgb(colour)).max(axis=-1) < 0.02).any(), colour


def test_the_panels_are_loss_held_out_metrics_throughput_and_active_classes(runs):
    metrics = [read_metrics(run) for run in runs]
    assert panel_keys(metrics) == ["loss", "top1", "top5", "samples_per_s", "active_classes"]


def test_next_item_metrics_get_a_panel_each(tmp_path):
    run = write_run(tmp_path / "seqrec", NEXT_ITEM_RECORDS)
    assert panel_keys([read_metrics(run)]) == [
        "loss",
        "valid_hit@10",
        "valid_ndcg@10",
        "test_hit@10",
        "test_ndcg@10",
        "samples_per_s",
        "active_classes",
    ]
    assert series(NEXT_ITEM_RECORDS, "loss") == ([1, 2], [9.0, 8.0])
    assert plot_runs([run], tmp_path / "seqrec.svg").read_text().startswith("<?xml")


def test_a_step_logged_twice_keeps_its_later_value():
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 2.5}]
    assert series(records, "loss") == ([1, 2], [3.0, 2.5])


def test_a_folder_without_metrics_is_named_in_a_one_line_error(tmp_path, capsys):
    folder, out = tmp_path / "not-a-run", tmp_path / "plot.png"
    folder.mkdir()
    assert cli.main(["plot", str(folder), "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{folder} has no metrics.jsonl" in error and error.count("\n") == 1
    (folder / "metrics.jsonl").write_text("")
    assert cli.main(["plot", str(folder), "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert "metrics.jsonl is empty" in error and str(folder) in error
    assert not out.exists()


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", NEXT_ITEM_RECORDS)
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    with pytest.raises(ValueError, match=r'pip install "megaclass\[plot\]"'):
        plot_runs([run], tmp_path / "plot.png")


def test_tensorboard_holds_the_metrics_records(runs):
    first, second = runs
    records = read_metrics(first)
    events = EventAccumulator(str(first / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "samples_per_s", "top1", "top5"} <= set(events.Tags()["scalars"])
    logged = [r for r in records if "loss" in r]
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in logged]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(
        [r["loss"] for r in logged], rel=1e-6
    )
    assert [e.step for e in events.Scalars("top1")] == [2, 4]
    assert not (second / "tensorboard").exists()  # train.tensorboard is off by default


def test_without_tensorboard_the_run_stops_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = load_config(None, [*RUN, "train.tensorboard=true"])
    with pytest.raises(ValueError, match=r'pip install "megaclass\[tensorboard\]"'):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
