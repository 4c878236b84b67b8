"""Markdown summary of benchmarks/products.sh: bf16 against fp32 products, and chunk sizes."""

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    print("# Product dtype and chunk size: `megaclass bench heads`\n")
    print("Reproduce: `bash benchmarks/products.sh`. Median of 3 timed steps (zero_grad +")
    print("forward + backward + optimizer step), dim 128, batch 1024, plain softmax, 2 threads.")
    print("`reference GFLOP/s`: a plain `torch.mm` [1024, 128] x [128, classes] in that dtype.\n")
    print("## bf16 against fp32 products, 10,000 classes\n")
    print("| head | fp32 ms/step | bf16 ms/step | bf16 / fp32 | reference GFLOP/s fp32 | bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    by_dtype = {d: _load(folder / f"products-10000-{d}.json") for d in ("fp32", "bf16")}
    for head in ("naive", "full"):
        fp32, bf16 = by_dtype["fp32"][head], by_dtype["bf16"][head]
        print(
            f"| {head} | {fp32['ms_per_step']:.1f} | {bf16['ms_per_step']:.1f} | "
            f"{bf16['ms_per_step'] / fp32['ms_per_step']:.2f} | "
            f"{fp32['reference_gemm_gflops']:.0f} | {bf16['reference_gemm_gflops']:.1f} |"
        )
    print("\n## Chunk size of the full softmax, 100,000 classes, fp32\n")
    print("| chunk | ms/step | peak RSS MB |")
    print("|---:|---:|---:|")
    for chunk in (4096, 8192):
        record = _load(folder / f"chunk-100000-{chunk}.json")["full"]
        print(f"| {chunk:,} | {record['ms_per_step']:.1f} | {record['peak_rss_mb']:.0f} |")
    ratio = (
        by_dtype["bf16"]["full"]["reference_gemm_gflops"]
        / by_dtype["fp32"]["full"]["reference_gemm_gflops"]
    )
    kind = "emulated: no AVX-512 BF16 or AMX" if ratio < 0.5 else "native"
    print(f"\nbf16 products on this CPU: {kind} (bf16 / fp32 reference rate {ratio:.3f}).")
    machine = by_dtype["fp32"]["full"]["machine"]
    threads, torch = machine["torch_threads"], machine["torch"]
    print(f"\nMachine: {machine['cpu']}, {threads} threads, torch {torch}.")


def _load(path: Path) -> dict[str, dict]:
    return {record["head"]: record for record in json.loads(path.read_text())}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
