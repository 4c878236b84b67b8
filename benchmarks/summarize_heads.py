"""Markdown table of `megaclass bench heads` JSON files: ratios of each head against naive."""

import json
import sys


def main(paths: list[str]) -> None:
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    machine = runs[0][0]["machine"]
    print("# `megaclass bench heads`: naive vs full\n")
    print(
        f"Machine: {machine['cpu']}, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, device {machine['device']}. "
        "Median of the timed steps (zero_grad + forward + backward + SGD step); "
        "each head in its own process. Reproduce: `bash benchmarks/heads.sh`.\n"
    )
    print(
        "| classes | dtype | head | ms/step | time vs naive | peak RSS MB | memory vs naive "
        "| gemm efficiency |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for records in sorted(runs, key=lambda r: (r[0]["num_classes"], r[0]["dtype"])):
        base = next(r for r in records if r["head"] == "naive")
        for r in records:
            print(
                f"| {r['num_classes']:,} | {r['dtype']} | {r['head']} | {r['ms_per_step']:.0f} "
                f"| {r['ms_per_step'] / base['ms_per_step']:.2f} | {r['peak_rss_mb']:.0f} "
                f"| {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['gemm_efficiency']:.2f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
