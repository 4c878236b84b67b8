"""Tables and plot of benchmarks/stability.py: held-out top-1 of each run, the gap to full, and
the embedding spread after the warm-up (from metrics.jsonl)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

HEADS = ("full", "random", "knn", "ann")


def _load(run: Path) -> dict | None:
    if not (run / "summary.json").exists():
        return None
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    spread = [r for r in records if "embedding_cosine" in r and r["step"] > 20]
    summary["worst_cosine"] = max((r["embedding_cosine"] for r in spread), default=float("nan"))
    summary["lowest_rank"] = min((r["embedding_rank"] for r in spread), default=float("nan"))
    summary["curve"] = [(r["step"], r["top1"]) for r in records if "top1" in r]
    summary["losses"] = [(r["step"], r["loss"]) for r in records if "loss" in r]
    return summary


def _row(name: str, run: dict, full: dict | None) -> str:
    gap = f"{100 * (run['top1'] - full['top1']):+.2f}" if full else ""
    share = f"{run['top1'] / full['top1']:.2f}" if full and full["top1"] > 0 else ""
    return (
        f"| {name} | {run['top1']:.4f} | {gap} | {share} | {run['worst_cosine']:.2f} "
        f"| {run['lowest_rank']:.1f} | {run['total_time_s']:.0f} |"
    )


_HEADER = (
    "| run | top-1 | vs full (points) | share of full | worst cosine | lowest rank | s |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)


def tables(runs: dict[str, dict]) -> str:
    """One table per group of runs that share data and steps (their name up to the head)."""
    groups: dict[str, list[str]] = {}
    for name in runs:
        parts = name.split("-")  # e.g. taxonomy-5k-50-knn-budget0.3: the group precedes the head
        head_at = next(i for i, part in enumerate(parts) if part in HEADS)
        groups.setdefault("-".join(parts[:head_at]), []).append(name)
    out = []
    for prefix, names in groups.items():
        full = runs.get(f"{prefix}-full")
        out += [f"\n### {prefix}\n", _HEADER]
        out += [_row(name, runs[name], full) for name in names]
    return "\n".join(out)


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (short, long, grid) = plt.subplots(1, 3, figsize=(17, 4.8))
    for name, run in runs.items():
        axes = {"100k-300": short, "100k-1000": long}.get(name.split("-", 1)[-1].rsplit("-", 1)[0])
        if axes is None or not run["curve"] or "nobn" in name:
            continue
        style = "--" if name.startswith("synthetic") else "-"
        axes.plot(*zip(*run["curve"], strict=True), style, label=name)
    short.set(xlabel="step", ylabel="held-out top-1", title="10^5 classes, 300 steps, 10% budget")
    long.set(xlabel="step", ylabel="held-out top-1", title="10^5 taxonomy classes, 1,000 steps")
    for head in HEADS:
        for backbone, style in (("bn", "-o"), ("nobn", "--x")):
            points = [
                (float(name.split("-")[1].removeprefix("lr")), run["top1"])
                for name, run in runs.items()
                if name.startswith("grid-") and name.endswith(f"-{backbone}-{head}")
            ]
            if points:
                grid.plot(*zip(*sorted(points), strict=True), style, label=f"{head}, {backbone}")
    grid.set(
        xlabel="learning rate",
        ylabel="held-out top-1",
        xscale="log",
        title="10^5 taxonomy classes, 100 steps (nobn: old MLP)",
    )
    for axes in (short, long, grid):
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_results(runs_dir: Path, results: Path) -> None:
    runs = {
        run.name: loaded
        for run in sorted(runs_dir.iterdir())
        if run.is_dir() and (loaded := _load(run)) is not None
    }
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    (results / "stability-runs.md").write_text(
        f"# Stability runs ({machine}; fp32 products, 1 thread per run)\n"
        "\nEvery run of `python benchmarks/stability.py`: held-out top-1, the gap to full on "
        "the same data and steps, and the embeddings' worst spread after step 20 (mean pairwise"
        " cosine, effective rank; see `megaclass.train.health`).\n" + tables(runs) + "\n"
    )
    plot(runs, results / "stability.png")
