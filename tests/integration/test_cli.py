"""The command line end to end, as a user runs it."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from megaclass import cli

FIELDS = {
    "head",
    "num_classes",
    "dim",
    "batch",
    "dtype",
    "num_active",
    "ms_per_step",
    "peak_rss_mb",
    "gemm_efficiency",
    "machine",
}


def _megaclass(*args):
    return subprocess.run(
        [sys.executable, "-m", "megaclass", *args], capture_output=True, text=True, timeout=300
    )


def test_bench_heads_writes_one_record_per_head(tmp_path):
    out = tmp_path / "bench.json"
    result = _megaclass(
        "bench",
        "heads",
        "--num-classes",
        "3001",
        "--dim",
        "16",
        "--batch",
        "64",
        "--steps",
        "2",
        "--chunk-size",
        "512",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [r["head"] for r in records] == ["naive", "full"]
    for r in records:
        assert r.keys() >= FIELDS
        assert r["num_classes"] == 3001 and r["num_active"] == 3001
        assert r["ms_per_step"] > 0 and r["peak_rss_mb"] > 0 and r["gemm_efficiency"] > 0
    assert "naive" in result.stdout and "full" in result.stdout and "gemm eff" in result.stdout


def test_bad_arguments_are_reported_without_a_traceback():
    result = _megaclass("bench", "heads", "--heads", "naive,bogus", "--steps", "1")
    assert result.returncode == 2
    assert "unknown heads ['bogus']" in result.stderr and "Traceback" not in result.stderr
    result = _megaclass("bench", "heads", "--num-classes", "0")
    assert result.returncode == 2 and "num_classes must be >= 1" in result.stderr


def test_bench_graph_reports_recall_against_brute_force(tmp_path):
    """Probing every list makes the IVF build exact, so its recall, like the exact build's
    (both fp32 here), is 1 up to ties; one probe finds fewer; the binary graph most."""
    out = tmp_path / "graph.json"
    result = _megaclass(
        "bench", "graph", "--num-classes", "900", "--dim", "16", "--k", "8",
        "--nprobe", "1,30", "--queries", "200", "--dtype", "fp32", "--threads", "1",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [(r["build"], r["nprobe"]) for r in records] == [
        ("exact", None),
        ("ivf", 1),
        ("ivf", 30),
        ("binary_graph", None),
    ]
    exact, one_probe, all_lists, binary_graph = records
    for r in (exact, all_lists):
        assert r["recall@1"] >= 0.99 and r["recall@8"] >= 0.99
    assert one_probe["recall@8"] < all_lists["recall@8"]
    assert binary_graph["recall@8"] >= 0.8  # its pruned near links: not all of the nearest
    assert all(r["build_s"] > 0 for r in records)
    assert "recall@8" in result.stdout


def test_bench_graph_rejects_bad_nprobe():
    result = _megaclass("bench", "graph", "--nprobe", "0")
    assert result.returncode == 2 and "nprobe values must be >= 1" in result.stderr


def test_bench_heads_times_the_head_a_run_config_trains(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        "[data]\nnum_classes = 2000\n[model]\nembedding_dim = 16\n[train]\nbatch_size = 64\n"
        '[head]\nmatmul_dtype = "fp32"\n[head.knn]\nbudget = 300\nk = 4\n'
    )
    out = tmp_path / "bench.json"
    result = _megaclass(
        "bench", "heads", "--config", str(config), "--set", "head.ann.k=8", "--heads", "knn,ann",
        "--steps", "1", "--threads", "1", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    knn, ann = json.loads(out.read_text())
    assert (knn["num_classes"], knn["dim"], knn["batch"]) == (2000, 16, 64)
    assert 300 < knn["num_active"] <= 300 + 64 and knn["graph_build"] == "exact"  # + labels
    assert knn["config"]["run"]["head"]["knn"]["k"] == 4
    assert ann["config"]["run"]["head"]["ann"]["k"] == 8 and ann["num_active"] < 2000
    bad = _megaclass("bench", "heads", "--config", str(config), "--set", "head.knn_k=8")
    assert bad.returncode == 2 and "head.knn_k is now head.knn.k" in bad.stderr


TINY_FEATURE_RUN = [
    "data.source=features",
    "head.sampler=full",
    "model.embedding_dim=16",
    "model.hidden_dim=32",
    "train.steps=1",
    "train.batch_size=64",
    "train.threads=1",
    "head.matmul_dtype=fp32",
]


def test_feature_files_announce_their_own_class_count_and_warn_about_a_mistyped_label(tmp_path):
    rng = np.random.default_rng(0)
    for split, rows in (("train", 600), ("eval", 100)):
        np.save(tmp_path / f"{split}_x.npy", rng.normal(size=(rows, 8)).astype(np.float32))
        np.save(tmp_path / f"{split}_y.npy", np.arange(rows, dtype=np.int64) % 50)
    labels = np.load(tmp_path / "train_y.npy")
    labels[7] = 999  # a typo for 49
    np.save(tmp_path / "train_y.npy", labels)
    overrides = [arg for item in TINY_FEATURE_RUN for arg in ("--set", item)]
    result = _megaclass(
        "train", *overrides, "--set", f"data.path={tmp_path}", "--run-dir", str(tmp_path / "run")
    )
    assert result.returncode == 0, result.stderr
    assert "labels 0 to 999, 1,000 classes" in result.stderr
    assert "megaclass train: 1,000 classes" in result.stderr
    warning = "megaclass: warning: " + str(tmp_path / "train_y.npy")
    assert f"{warning}: 949 of 1,000 classes have no training sample" in result.stderr


def test_a_missing_sequence_file_is_a_one_line_error(tmp_path):
    result = _megaclass(
        "train", "--set", "data.source=seqrec", "--set", "data.path=no-such-walks.txt",
        "--set", "model.backbone=sasrec", "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    missing = Path.cwd() / "no-such-walks.txt"  # a relative --set path: the current folder
    assert result.stderr == f"megaclass: error: sequence file {missing} does not exist\n"


def test_the_command_line_shows_the_library_s_messages_on_rank_0_only(capsys, monkeypatch):
    library, root = logging.getLogger("megaclass"), logging.getLogger()
    before = (library.level, list(library.handlers), root.level, list(root.handlers))
    monkeypatch.delenv("RANK", raising=False)
    with cli._library_messages_on_stderr():
        logging.getLogger("megaclass.index").info("class graph: 1 of 2 classes (50%)")
        logging.getLogger("megaclass.data").warning("something odd")
        logging.getLogger("elsewhere").warning("not the library's")
    assert capsys.readouterr().err == (
        "class graph: 1 of 2 classes (50%)\nmegaclass: warning: something odd\n"
    )
    monkeypatch.setenv("RANK", "1")
    with cli._library_messages_on_stderr():
        logging.getLogger("megaclass.index").info("class graph: 1 of 2 classes (50%)")
    assert capsys.readouterr().err == ""
    assert (library.level, library.handlers, root.level, root.handlers) == before
