"""The command line end to end, as a user runs it."""

import json
import subprocess
import sys

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
    (both fp32 here), is 1 up to ties; one probe finds fewer."""
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
    ]
    exact, one_probe, all_lists = records
    for r in (exact, all_lists):
        assert r["recall@1"] >= 0.99 and r["recall@8"] >= 0.99
    assert one_probe["recall@8"] < all_lists["recall@8"]
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
