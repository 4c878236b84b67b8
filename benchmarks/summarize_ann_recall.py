"""Table and plot of benchmarks/ann_recall.py's JSON: recall@k and search time over nprobe.
Usage: summarize_ann_recall.py RECALL_JSON OUT_MD OUT_PNG"""

import json
import sys
from pathlib import Path


def _label(record: dict) -> str:
    if not record["backend"].startswith("BinaryIVF"):
        return f"{record['backend']}, {record['bits']} bits"
    rerank = f", re-rank {record['rerank']}" if record["rerank"] else ""
    return f"{record['backend']}, {record['bits']} bits, {record['rotation']}{rerank}"


def table(summary: dict) -> str:
    records = summary["records"]
    nprobes = sorted({r["nprobe"] for r in records})
    labels = list(dict.fromkeys(_label(r) for r in records))
    by_key = {(_label(r), r["nprobe"]): r for r in records}
    head = "| index | " + " | ".join(f"nprobe {p}" for p in nprobes) + " |"
    rows = [head, "|---|" + "---:|" * len(nprobes)]
    for label in labels:
        cells = []
        for p in nprobes:
            r = by_key.get((label, p))
            cells.append(
                f"{r['recall']:.3f} / {r['nearest_found']:.2f} ({r['search_ms']:.0f} ms)"
                if r
                else ""
            )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(summary: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label in dict.fromkeys(_label(r) for r in summary["records"]):
        points = sorted(
            (r["nprobe"], r["recall"], r["search_ms"])
            for r in summary["records"]
            if _label(r) == label
        )
        nprobe, recall, ms = zip(*points, strict=True)
        left.plot(nprobe, recall, marker="o", label=label)
        right.plot(ms, recall, marker="o", label=label)
    left.set_xscale("log", base=2)
    left.set_xlabel("nprobe")
    right.set_xlabel(f"search time of {summary['queries']:,} queries (ms)")
    for axis in (left, right):
        axis.set_ylabel(f"recall@{summary['k']}")
        axis.grid(alpha=0.3)
    left.legend(fontsize=7)
    figure.suptitle(f"BinaryIVF on trained class weights, {summary['num_classes']:,} classes")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main(source: Path, out_md: Path, out_png: Path) -> None:
    summary = json.loads(source.read_text())
    machine = summary["machine"]
    text = (
        f"# BinaryIVF retrieval recall@{summary['k']} on trained class weights\n\n"
        f"Class weights of `{summary['run']}` ({summary['num_classes']:,} classes, dim 128); "
        f"queries: the backbone's embeddings of {summary['queries']:,} held-out samples; truth: "
        f"exact top-{summary['k']} by cosine over all classes. Cells: recall@{summary['k']} / "
        "share of queries whose nearest class is found (search time of all queries, "
        f"{machine['torch_threads']} threads, {machine['cpu']}). "
        "faiss IndexBinaryIVF indexes the same 128-bit codes with its own binary k-means "
        "quantizer and the same number of lists. Reproduce: `python benchmarks/ann_recall.py "
        f"{summary['run']} {source}` then `python benchmarks/summarize_ann_recall.py ...`.\n\n"
        + table(summary)
        + "\n"
    )
    out_md.write_text(text)
    plot(summary, out_png)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
