"""Table and plot of benchmarks/accuracy.sh: held-out top-1 of full, knn (as published, with a
frequent share, with graph walks too, and with a fill drawn by label frequency), ann and random
by step."""

import json
import os
import sys
from pathlib import Path

import tomllib

SAMPLERS = ("full", "knn", "knn-frequent", "knn-walk", "knn-fill", "ann", "random")
COLORS = {
    "full": "tab:blue",
    "knn": "tab:orange",
    "knn-frequent": "tab:purple",
    "knn-walk": "tab:brown",
    "knn-fill": "tab:olive",
    "ann": "tab:red",
    "random": "tab:green",
}


def _runs(folder: Path) -> dict[tuple[int, str], Path]:
    found = {}
    for run in sorted(folder.glob("*-*")):
        classes, sampler = run.name.split("-", 1)  # "100000-knn-frequent"
        if (run / "summary.json").exists():
            found[(int(classes), sampler)] = run
    return found


def _curve(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["top1"]) for r in map(json.loads, lines) if "top1" in r]


def table(runs: dict[tuple[int, str], Path]) -> str:
    rows = [
        "| classes | sampler | active classes | top-1 | top-5 | top-1 vs full (points) "
        "| samples/s | total s | threads |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (classes, sampler), run in sorted(runs.items()):
        summary = json.loads((run / "summary.json").read_text())
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        active = next(r["active_classes"] for r in reversed(last) if "active_classes" in r)
        full = runs.get((classes, "full"))
        delta = ""
        if full is not None:
            full_top1 = json.loads((full / "summary.json").read_text())["top1"]
            delta = f"{100 * (summary['top1'] - full_top1):+.2f}"
        rows.append(
            f"| {classes:,} | {sampler} | {active:,} | {summary['top1']:.4f} "
            f"| {summary['top5']:.4f} | {delta} | {summary['mean_samples_per_s']:.0f} "
            f"| {summary['total_time_s']:.0f} | {_threads(run)} |"
        )
    return "\n".join(rows)


def _threads(run: Path) -> int:
    """Torch threads the run used (``train.threads``; 0 means every core of this machine)."""
    config = tomllib.loads((run / "config.toml").read_text())
    return config["train"]["threads"] or os.cpu_count()


def plot(runs: dict[tuple[int, str], Path], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        return
    sizes = sorted({classes for classes, _ in runs})
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
    for axis, classes in zip(axes[0], sizes, strict=True):
        for sampler in SAMPLERS:
            if (classes, sampler) in runs:
                steps, top1 = zip(*_curve(runs[(classes, sampler)]), strict=True)
                axis.plot(steps, top1, marker="o", label=sampler, color=COLORS[sampler])
        axis.set_title(f"{classes:,} classes, 10% budget")
        axis.set_xlabel("step")
        axis.set_ylabel("held-out top-1")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main(folder: Path, results: Path) -> None:
    runs = _runs(folder)
    text = (
        "# Held-out top-1: full vs knn vs ann vs random (10% budget)\n\n"
        "Default run (MLP backbone, CosFace s=32 m=0.2, bf16, 300 steps of 1024) with "
        "`data.num_classes` and `head.sampler` set, budget 10%, graph refresh every 100 steps "
        "(IVF nprobe 4 at 10^6 classes), evaluated every 50 steps on 5,000 held-out samples; "
        "head: SparseSGD, rows kept at norm 0.3; random and knn with the logit correction, knn "
        "keeping 25% of its budget for drawn classes (the defaults); knn-frequent: knn keeping "
        "another 50% for the most frequent training labels so far (`head.knn.frequent_share = "
        "0.5`); knn-walk: knn-frequent plus each sample's 8 best classes found by a walk of the "
        "class graph (`head.knn.walk_k = 8`); knn-fill: a frequent share of 0.3, the walk, and "
        "35% of the budget drawn in proportion to label counts (`head.knn.random_share = 0.35`, "
        '`head.knn.fill = "frequency"`); ann, groups of 64 samples: '
        "at 10^5 classes exact search (every class scored) for each sample's 28 best, and 5% of "
        "the classes drawn per step for every group (logit-corrected); at 10^6 the binary IVF "
        "index (128-bit codes, 32 of its 1,000 lists probed, the 1,000 best by Hamming distance "
        "re-ranked by exact cosine, rebuilt every 100 steps) for each sample's 96 best. "
        "samples/s and total s include those evaluations, and runs at one thread ran beside "
        "another run (knn-frequent and knn-walk beside several, knn-fill beside one): compare "
        "speeds with "
        "`megaclass bench heads`, not here. Reproduce: "
        "`bash benchmarks/accuracy.sh`. Plot: `accuracy.png`.\n\n" + table(runs) + "\n"
    )
    (results / "accuracy.md").write_text(text)
    plot(runs, results / "accuracy.png")
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
