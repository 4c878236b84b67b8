"""Records, table and plot of benchmarks/seqrec.sh: test HIT@10 and NDCG@10 (at the best
validation NDCG@10) of full, knn, ann and random on the next-item data sets, mean and spread over
seeds, beside the published ICLRec figures.

`record RUN_DIR RECORDS` keeps a finished run's summary (and its mean active items per step) as
RECORDS/RUN_NAME.json: small files committed as a sweep goes, so that a sweep longer than one
sitting picks up where it stopped on another machine. `table RECORDS OUT` writes the table of
OUT/seqrec.md (between its markers; the text around them is kept) and OUT/seqrec.png from them.
"""

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


def record(run: Path, records: Path) -> None:
    """Keep the finished run's summary and mean active items per step as records/RUN_NAME.json."""
    summary = json.loads((run / "summary.json").read_text())
    steps = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    active = [r["active_classes"] for r in steps if "active_classes" in r]
    summary["active_classes"] = statistics.mean(active)  # per step, all groups
    summary.pop("checkpoint", None)  # a path on the machine that ran it
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{run.name}.json").write_text(json.dumps(summary, indent=1) + "\n")


def _runs(records: Path) -> dict[tuple[str, str], list[dict]]:
    """(data set, sampler) -> the records of its finished seeds."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(records.glob("*-*-*.json")):
        data, sampler, _seed = path.stem.rsplit("-", 2)
        found.setdefault((data, sampler), []).append(json.loads(path.read_text()))
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
    command, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if command not in ("record", "table"):
        sys.exit(
            "usage: summarize_seqrec.py record RUN_DIR RECORDS | table RECORDS OUT; "
            f"got {command!r}"
        )
    if command == "record":
        record(source, out)
        return
    runs = _runs(source)
    text = (out / "seqrec.md").read_text() if (out / "seqrec.md").exists() else ""
    marker, end = "<!-- table -->", "<!-- end of table -->"
    head = text.split(marker)[0] if marker in text else "# Next-item prediction\n\n"
    tail = text.split(end)[1] if end in text else "\n"
    (out / "seqrec.md").write_text(f"{head}{marker}\n{table(runs)}\n{end}{tail}")
    plot(runs, out / "seqrec.png")
    print(table(runs))


if __name__ == "__main__":
    main()
