"""Markdown summary of benchmarks/knn.sh: the issue-4 targets as ratios, from the JSON records."""

import json
import sys
from pathlib import Path

BYTES = 4  # fp32 weights and optimizer state


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _state_bytes(record: dict) -> int:
    """Weights + optimizer state of the class layer."""
    rows, dim = record["num_classes"], record["dim"]
    config = record["config"]  # records before the nested config named the optimizer directly
    optimizer = (
        config["optimizer"] if "optimizer" in config else config["run"]["optim"]["head_optimizer"]
    )
    state = rows * dim * BYTES if optimizer == "sgd" else rows * BYTES
    return rows * dim * BYTES + state


def main(folder: Path) -> None:
    print("# KNN and ANN softmax: `megaclass bench heads` (issue 4 and 5 targets)\n")
    print("Reproduce: `bash benchmarks/knn.sh`. Median of the timed steps (zero_grad + forward +")
    print("backward + optimizer step; ann: + retrieval); each head in its own process; graph and")
    print("index built before timing. ann: groups of 64 samples, 128-bit codes; 64 classes")
    print("retrieved per sample with nprobe 8 in the first table, and in the second as")
    print("benchmarks/accuracy.sh runs it at 10^6 classes: 96 per sample, nprobe 32, the best")
    print("1,000 by Hamming distance re-ranked exactly, index rebuilt every 100 steps (its build")
    print("amortised in the last column). Every megaclass head keeps the memory it frees")
    print("(`megaclass.process`; naive, plain PyTorch, runs with glibc's default malloc); the")
    print("last table compares that with glibc's default.\n")
    machine = None
    print("## 1,000,000 classes, dim 128, batch 1024, 10% budget\n")
    print(
        "| dtype | head | active | ms/step | naive / head | full / head | peak RSS MB "
        "| graph (index) s | retrieval ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for dtype in ("fp32", "bf16"):
        records = {r["head"]: r for r in _load(folder / f"knn-1000000-{dtype}.json")}
        for name, r in records.items():
            machine = r["machine"]
            graph = f"{r['graph_build_s']:.1f} ({r['graph_build']})" if "graph_build_s" in r else ""
            if "index_build_s" in r:
                graph = (
                    f"{r['index_build_s']:.1f} (binary IVF, {r.get('ann_backend', 'torch')} scan)"
                )
            retrieval = f"{r['retrieval_ms_per_step']:.0f}" if "retrieval_ms_per_step" in r else ""
            print(
                f"| {dtype} | {name} | {r['num_active']:,} | {r['ms_per_step']:.0f} "
                f"| {records['naive']['ms_per_step'] / r['ms_per_step']:.1f} "
                f"| {records['full']['ms_per_step'] / r['ms_per_step']:.1f} "
                f"| {r['peak_rss_mb']:.0f} | {graph} | {retrieval} |"
            )
    print(
        "\nTargets: knn >= 20x faster than naive and >= 5x faster than full; ann step <= 0.25x "
        "full's (full / ann >= 4).\n"
    )
    print("## ann with the faiss Hamming scan against full, 1,000,000 classes\n")
    print(
        "| dtype | head | active | ms/step | retrieval ms | full / head | scan "
        "| index build ms / step |"
    )
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for dtype in ("fp32", "bf16"):
        records = {r["head"]: r for r in _load(folder / f"ann-1000000-{dtype}.json")}
        for name, r in records.items():
            retrieval = f"{r['retrieval_ms_per_step']:.0f}" if "retrieval_ms_per_step" in r else ""
            print(
                f"| {dtype} | {name} | {r['num_active']:,} | {r['ms_per_step']:.0f} | {retrieval} "
                f"| {records['full']['ms_per_step'] / r['ms_per_step']:.1f} "
                f"| {r.get('ann_backend', '')} | {r.get('index_ms_per_step_amortised', 0):.0f} |"
            )
    print()
    print("## Fixed budget of 50,000 active classes, bf16: 100,000 vs 10,000,000 classes\n")
    print(
        "| optimizer | classes | ms/step | vs 100k | peak RSS GB | weights + state GB "
        "| peak / (weights + state) | graph build s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for optimizer in ("rowadagrad", "sgd"):
        small = _load(folder / f"knn-fixed-100000-{optimizer}.json")
        for records in (small, _load(folder / f"knn-fixed-10000000-{optimizer}.json")):
            for r in records:
                machine = r["machine"]
                state = _state_bytes(r) / 1e9
                peak = r["peak_rss_mb"] * 2**20 / 1e9  # peak_rss_mb is in MiB
                print(
                    f"| {optimizer} | {r['num_classes']:,} | {r['ms_per_step']:.0f} "
                    f"| {r['ms_per_step'] / small[0]['ms_per_step']:.2f} "
                    f"| {peak:.1f} | {state:.2f} | {peak / state:.2f} "
                    f"| {r['graph_build_s']:.0f} ({r['graph_build']}) |"
                )
    print("\nTargets: 10^7 step <= 1.3x the 10^5 step; peak <= 2.5x (weights + optimizer state).")
    print("The graph (int32, k = 32) is in the peak but not in the denominator.\n")
    _allocator_table(folder)
    if machine:
        print(
            f"Machine: {machine['cpu']}, {machine['torch_threads']} torch threads, "
            f"torch {machine['torch']}, device {machine['device']}."
        )


def _allocator_table(folder: Path) -> None:
    """random and knn at 10^6 classes (bf16) with glibc's default malloc, against the same
    heads of the first table (freed memory kept)."""
    system = _load(folder / "knn-1000000-bf16-system-malloc.json")
    if not system:
        return
    kept = {r["head"]: r for r in _load(folder / "knn-1000000-bf16.json")}
    print("## Freed memory kept (default) or returned to the system, bf16, 10^6 classes\n")
    print(
        "| head | ms/step, kept | ms/step, system malloc | system / kept | peak RSS MB, kept "
        "| peak RSS MB, system |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in system:
        k = kept[r["head"]]
        print(
            f"| {r['head']} | {k['ms_per_step']:.0f} | {r['ms_per_step']:.0f} "
            f"| {r['ms_per_step'] / k['ms_per_step']:.2f} | {k['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    print()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
