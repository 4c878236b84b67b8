#!/usr/bin/env bash
# Reproduces benchmarks/results/accuracy.md and accuracy.png: held-out top-1 of full, knn, ann and
# random (10% budget) with the default run's backbone and steps, at 100,000 and 1,000,000
# classes of the synthetic catalogue, evaluated every 50 steps. ann retrieves 14 classes per
# sample at 10^5 classes and 96 at 10^6, so that a step's candidates stay within 10% of the
# classes. Usage: accuracy.sh [CLASSES...] (default: 100000 1000000). Full at 10^6 classes takes
# about 30 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=runs/accuracy
[ $# -gt 0 ] || set -- 100000 1000000
for classes in "$@"; do
  ann_k=$((classes >= 1000000 ? 96 : 14))
  for sampler in knn ann random full; do
    dir="$runs/$classes-$sampler"
    [ -f "$dir/summary.json" ] && continue
    rm -rf "$dir"
    megaclass train --run-dir "$dir" --set data.num_classes="$classes" \
      --set head.sampler="'$sampler'" --set head.budget=0.1 --set head.refresh_every=100 \
      --set head.nprobe=4 --set head.ann_k="$ann_k" --set train.eval_every=50 \
      --set data.eval_samples=5000
  done
done
python benchmarks/summarize_accuracy.py "$runs" benchmarks/results
