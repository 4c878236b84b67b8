"""Where each head trains and where it collapses: full, random, knn and ann, with the MLP's
embedding BatchNorm (the default backbone) and without it (the backbone before the fix), on the
synthetic catalogue and on the taxonomy feature files (``megaclass.data.taxonomy``).

    python benchmarks/stability.py [GROUP ...]     # runs into runs/stability, then summarises

Groups (default: all, in this order): ``balanced`` (5,000 balanced classes of both generators,
50 and 200 steps, and budgets), ``tail`` (10^5 classes of both generators, 300 steps, 10%
budget), ``million`` (10^6 synthetic classes, 300 steps, 10% budget; full takes over an hour
at one thread), ``long`` (10^5 taxonomy classes, 1,000 steps), ``grid`` (10^5 taxonomy classes, 100
steps: learning rate x head x backbone). Every run
uses ``head.matmul_dtype = "fp32"`` and 1 thread, two runs side by side. A run whose summary
exists is not run again. Writes benchmarks/results/stability-runs.md and stability.png (the plot
needs matplotlib).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "stability"
DATA = RUNS / "data"
HEADS = {
    "full": ["head.sampler='full'"],
    "random": ["head.sampler='random'"],
    "knn": ["head.sampler='knn'"],
    "ann": ["head.sampler='ann'"],
}
WITHOUT_BN = ["model.backbone='benchmarks.backbones:mlp_without_batchnorm'"]
COMMON = ["head.matmul_dtype='fp32'", "train.threads=1", "train.stop_on_collapse=false"]
TAXONOMY = {  # name: (classes, samples, zipf, held-out classes)
    "taxonomy-5k": (5_000, 200_000, 0.0, 5_000),
    "taxonomy-100k": (100_000, 800_000, 0.8, 20_000),
}


def budget(fraction: float) -> list[str]:
    """Random's rate and knn's budget."""
    return [f"head.random.rate={fraction}", f"head.knn.budget={fraction}"]


def data_args(source: str) -> list[str]:
    if source == "synthetic-5k":
        return ["data.num_classes=5000", "data.zipf=0.0"]
    if source == "synthetic-100k":
        return ["data.num_classes=100000", "data.eval_samples=10000"]
    if source == "synthetic-1m":
        return ["data.num_classes=1000000", "data.eval_samples=10000"]
    return ["data.source='features'", f"data.path='{DATA / source}'", "data.num_classes=0"]


def planned(groups: list[str]) -> dict[str, list[str]]:
    """Run name -> overrides, in the order of ``groups``."""
    runs: dict[str, list[str]] = {}
    if "balanced" in groups:
        for source in ("synthetic-5k", "taxonomy-5k"):
            for steps in (50, 200):
                for head, args in HEADS.items():
                    runs[f"{source}-{steps}-{head}"] = [
                        *data_args(source),
                        *args,
                        f"train.steps={steps}",
                    ]
            for steps in (50, 200):
                for fraction in (0.3, 0.6, 0.9):
                    for head in ("random", "knn"):
                        runs[f"{source}-{steps}-{head}-budget{fraction}"] = [
                            *data_args(source),
                            *HEADS[head],
                            f"train.steps={steps}",
                            *budget(fraction),
                        ]
            runs[f"{source}-50-knn-nobn"] = [
                *data_args(source),
                *HEADS["knn"],
                "train.steps=50",
                *WITHOUT_BN,
            ]
            runs[f"{source}-50-full-nobn"] = [
                *data_args(source),
                *HEADS["full"],
                "train.steps=50",
                *WITHOUT_BN,
            ]
    if "tail" in groups:
        for source in ("taxonomy-100k", "synthetic-100k"):
            for head, args in HEADS.items():
                runs[f"{source}-300-{head}"] = [
                    *data_args(source),
                    *args,
                    *budget(0.1),
                    "train.steps=300",
                    "train.eval_every=50",
                ]
            runs[f"{source}-300-knn-nobn"] = [
                *data_args(source),
                *HEADS["knn"],
                *budget(0.1),
                "train.steps=300",
                "train.eval_every=50",
                *WITHOUT_BN,
            ]
    if "million" in groups:
        for head in ("full", "knn", "ann", "random"):  # full first: it takes longest
            runs[f"synthetic-1m-300-{head}"] = [
                *data_args("synthetic-1m"),
                *HEADS[head],
                *budget(0.1),
                "train.steps=300",
                "train.eval_every=100",
            ]
    if "long" in groups:
        for head in ("full", "ann", "random", "knn"):
            runs[f"taxonomy-100k-1000-{head}"] = [
                *data_args("taxonomy-100k"),
                *HEADS[head],
                *budget(0.1),
                "train.steps=1000",
                "train.eval_every=100",
            ]
    if "grid" in groups:
        for lr in (0.05, 0.2, 0.5):
            for backbone, extra in (("bn", []), ("nobn", WITHOUT_BN)):
                for head, args in HEADS.items():
                    runs[f"grid-lr{lr}-{backbone}-{head}"] = [
                        *data_args("taxonomy-100k"),
                        *args,
                        *budget(0.1),
                        "train.steps=100",
                        f"optim.lr={lr}",
                        *extra,
                    ]
    return runs


def make_data() -> None:
    from megaclass.data.taxonomy import TaxonomySpec, write_taxonomy_features

    for name, (classes, samples, zipf, held_out) in TAXONOMY.items():
        if not (DATA / name / "taxonomy.json").exists():
            spec = TaxonomySpec(classes, samples, zipf=zipf, eval_classes=held_out)
            print(f"writing {name}: {write_taxonomy_features(DATA / name, spec)}", flush=True)


def run(name: str, overrides: list[str]) -> None:
    folder = RUNS / name
    if (folder / "summary.json").exists():
        return
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    args = [a for o in [*COMMON, *overrides] for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(RUNS / f"{name}.log", "w") as log:
        subprocess.run(
            [sys.executable, "-m", "megaclass", "train", "--run-dir", str(folder), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            check=False,
        )
    print(f"{name}: {_result(folder)}", flush=True)


def _result(folder: Path) -> str:
    summary = folder / "summary.json"
    if not summary.exists():
        return "failed (see its log)"
    return f"top-1 {json.loads(summary.read_text())['top1']:.4f}"


def summarize() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from summarize_stability import write_results

    write_results(RUNS, ROOT / "benchmarks" / "results")


if __name__ == "__main__":
    groups = sys.argv[1:] or ["balanced", "tail", "million", "long", "grid"]
    RUNS.mkdir(parents=True, exist_ok=True)
    make_data()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda item: run(*item), planned(groups).items()))
    summarize()
