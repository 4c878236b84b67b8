#!/usr/bin/env bash
# Reproduces benchmarks/results/heads-*.json and heads.md: naive vs full at 100k and 1M classes,
# dim 128, batch 1024, fp32 and bf16, 2 threads. Takes about 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
for classes in 100000 1000000; do
  for dtype in fp32 bf16; do
    megaclass bench heads --num-classes "$classes" --dim 128 --batch 1024 --dtype "$dtype" \
      --heads naive,full --margin softmax --chunk-size 4096 --steps 3 --threads 2 --json "$out/heads-${classes}-${dtype}.json"
  done
done
python benchmarks/summarize_heads.py "$out"/heads-*.json > "$out/heads.md"
