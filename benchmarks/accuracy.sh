#!/usr/bin/env bash
# Reproduces benchmarks/results/accuracy.md and accuracy.png: held-out top-1 of full, knn, ann and
# random (10% budget) with the default run's backbone and steps, at 100,000 and 1,000,000
# classes of the synthetic catalogue, evaluated every 50 steps; knn-frequent is knn with half
# its budget kept for the most frequent training labels so far (head.knn.frequent_share),
# knn-walk that plus each sample's 8 best classes found by a walk of the graph; knn-fill a
# frequent share of 0.3, the walk, and 35% of the budget drawn in proportion to label counts
# (head.knn.fill = "frequency"). ann
# at 10^5 classes scores every class to retrieve each sample's 28 best (exact search) and draws
# 5% of the classes per step (at most 6.9% of the classes per sample); at 10^6 its binary IVF
# index retrieves 96 per sample (32 lists probed, the 1,000 best by Hamming distance re-ranked
# by exact cosine; at most 6,208 classes per group of 64 samples, 0.6%). Usage: accuracy.sh
# [CLASSES...] (default: 100000 1000000). Full at 10^6 classes takes about 35 minutes on 2 CPU
# cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=runs/accuracy
[ $# -gt 0 ] || set -- 100000 1000000
for classes in "$@"; do
  if [ "$classes" -ge 1000000 ]; then
    ann=(--set head.ann.k=96 --set head.ann.nprobe=32 --set head.ann.rerank=1000)
  else
    ann=(--set head.ann.k=28 --set head.ann.search='"exact"' --set head.ann.uniform=0.05)
  fi
  for sampler in knn knn-frequent knn-walk knn-fill ann random full; do
    dir="$runs/$classes-$sampler"
    [ -f "$dir/summary.json" ] && continue
    rm -rf "$dir"
    frequent=0.0 walk=0 random=0.25 fill=uniform
    [ "$sampler" = knn-frequent ] && sampler=knn frequent=0.5
    [ "$sampler" = knn-walk ] && sampler=knn frequent=0.5 walk=8
    [ "$sampler" = knn-fill ] && sampler=knn frequent=0.3 walk=8 random=0.35 fill=frequency
    megaclass train --run-dir "$dir" --set data.num_classes="$classes" \
      --set head.sampler="'$sampler'" --set head.knn.frequent_share="$frequent" \
      --set head.knn.walk_k="$walk" --set head.knn.random_share="$random" \
      --set head.knn.fill="'$fill'" \
      --set head.knn.budget=0.1 --set head.random.rate=0.1 \
      --set head.knn.refresh_every=100 --set head.ann.refresh_every=100 \
      --set head.knn.nprobe=4 "${ann[@]}" --set train.eval_every=50 --set data.eval_samples=5000
  done
done
python benchmarks/summarize_accuracy.py "$runs" benchmarks/results
