"""Table and plot of benchmarks/seqrec.sh: test HIT@10 and NDCG@10 (at the best validation
NDCG@10) of full, knn, ann and random on the next-item data sets, mean and spread over seeds,
beside the published ICLRec figures."""

import json
import statistics
import sys
from pathlib import Path

SAMPLERS = ("full", "knn", "ann", "random")
COLORS = {"full": "tab:blue", "knn": "tab:orange", "ann": "tab:red", "random": "tab:green"}
DATA_SETS = {  # recipe name: (file stem, ICLRec test HIT@10, NDCG@10 from ../shared/data/README.md)
    "beauty": ("Beauty", 0.0744, 0.0403),
    "sports": ("Sports", 0.0437, 0.0238),
    "toys": ("Toys", 0.0834, 0.0480),
    "video": ("Video", None, None),
}
METRICS = ("test_hit@10", "test_ndcg@10")


def _runs(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """(data set, sampler) -> the summaries of its finished seeds."""
    found: dict[tuple[str, str], list[dict]] = {}
    for run in sorted(folder.glob("*-*-*")):
        data, sampler, _seed = run.name.rsplit("-", 2)
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            active = [r["active_classes"] for r in records if "active_classes" in r]
            summary["active_classes"] = statistics.mean(active)  # per step, all groups
            found.setdefault((data, sampler), []).append(summary)
    return found


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: dict[tuple[str, str], list[dict]]) -> str:
    rows = [
        "| data set | sampler | seeds | test HIT@10 | test NDCG@10 | vs full HIT@10 "
        "| vs full NDCG@10 | active items | epochs (best) | s / epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for data, (stem, hit, ndcg) in DATA_SETS.items():
        if not any((data, sampler) in runs for sampler in SAMPLERS):
            continue
        full = runs.get((data, "full"))
        for sampler in SAMPLERS:
            summaries = runs.get((data, sampler))
            if not summaries:
                continue
            cells = []
            for metric in METRICS:
                mean, spread = _mean_spread([s["best"][metric] for s in summaries])
                cells.append(f"{mean:.4f} ± {spread:.4f}")
            for metric in METRICS:
                if full is None or sampler == "full":
                    cells.append("")
                    continue
                ours = statistics.mean(s["best"][metric] for s in summaries)
                reference = statistics.mean(s["best"][metric] for s in full)
                cells.append(f"{100 * (ours / reference - 1):+.1f}%")
            active = statistics.mean(s["active_classes"] for s in summaries)
            epochs = statistics.mean(s["best"]["epochs"] for s in summaries)
            per_epoch = statistics.mean(s["total_time_s"] / s["epochs"] for s in summaries)
            rows.append(
                f"| {stem} | {sampler} | {len(summaries)} | {' | '.join(cells)} "
                f"| {active:,.0f} | {epochs:.1f} | {per_epoch:.1f} |"
            )
        if hit is not None:
            rows.append(f"| {stem} | ICLRec (published) | | {hit:.4f} | {ndcg:.4f} | | | | | |")
    return "\n".join(rows)


def plot(runs: dict[tuple[str, str], list[dict]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        return
    names = [data for data in DATA_SETS if any((data, s) in runs for s in SAMPLERS)]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(11, 3.8), squeeze=False)
    width = 0.8 / (len(SAMPLERS) + 1)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for offset, sampler in enumerate(SAMPLERS):
            xs, means, spreads = [], [], []
            for x, data in enumerate(names):
                if (data, sampler) in runs:
                    mean, spread = _mean_spread([s["best"][metric] for s in runs[(data, sampler)]])
                    xs.append(x + offset * width)
                    means.append(mean)
                    spreads.append(spread)
            axis.bar(xs, means, width, yerr=spreads, label=sampler, color=COLORS[sampler])
        published = [DATA_SETS[d][1 if metric == "test_hit@10" else 2] for d in names]
        xs = [x + len(SAMPLERS) * width for x, p in enumerate(published) if p is not None]
        axis.bar(xs, [p for p in published if p is not None], width, label="ICLRec", color="grey")
        axis.set_xticks([x + 2 * width for x in range(len(names))])
        axis.set_xticklabels([DATA_SETS[d][0] for d in names])
        axis.set_title(metric.replace("test_", "test ").upper().replace("TEST", "test"))
    axes[0][0].legend(fontsize=8, loc="lower left")
    figure.suptitle("Next-item prediction, SASRec, 10% budget for the sampled softmaxes")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    runs_folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = _runs(runs_folder)
    text = (out / "seqrec.md").read_text() if (out / "seqrec.md").exists() else ""
    marker = "<!-- table -->"
    head = text.split(marker)[0] if marker in text else "# Next-item prediction\n\n"
    (out / "seqrec.md").write_text(f"{head}{marker}\n{table(runs)}\n")
    plot(runs, out / "seqrec.png")
    print(table(runs))


if __name__ == "__main__":
    main()
