#!/usr/bin/env bash
# Reproduces benchmarks/results/knn-*.json and knn.md (issue 4 targets), 2 threads, dim 128,
# batch 1024:
#  1. 1,000,000 classes, 10% budget: naive, full, random, knn, ann (64 classes per sample,
#     at most 6.6% of the classes); fp32 and bf16 (~15 minutes);
#  2. a fixed budget of 50,000 active classes: knn at 100,000 and 10,000,000 classes, with
#     RowAdaGrad and with SparseSGD (momentum), peak memory included (~10 minutes; the 10^7 graph
#     is built with nprobe 1, 3-4 minutes each);
#  3. random and knn in bf16 with glibc's default malloc (--system-malloc, ~3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
# the settings bench heads had before it took a run config: plain softmax, chunks of 4,096,
# graph cost amortised over 1,000 steps, the rest of the budget drawn uniformly
common=(--dim 128 --batch 1024 --threads 2 --steps 3 --margin softmax --chunk-size 4096
  --refresh-every 1000 --set head.knn.fill=uniform)
for dtype in fp32 bf16; do
  megaclass bench heads "${common[@]}" --num-classes 1000000 --dtype "$dtype" \
    --heads naive,full,random,knn,ann --budget 0.1 --json "$out/knn-1000000-${dtype}.json"
done
# ann as benchmarks/accuracy.sh runs it at 10^6 classes (96 per sample, 32 lists probed, the
# 1,000 best by Hamming distance re-ranked exactly; default faiss scan) against full, on their
# own (~4 minutes)
for dtype in fp32 bf16; do
  megaclass bench heads "${common[@]}" --num-classes 1000000 --dtype "$dtype" \
    --heads full,ann --ann-k 96 --ann-nprobe 32 --rerank 1000 --refresh-every 100 \
    --json "$out/ann-1000000-${dtype}.json"
done
for optimizer in rowadagrad sgd; do
  for classes in 100000 10000000; do
    megaclass bench heads "${common[@]}" --num-classes "$classes" --dtype bf16 --heads knn \
      --budget 50000 --nprobe 1 --optimizer "$optimizer" \
      --json "$out/knn-fixed-${classes}-${optimizer}.json"
  done
done
# the same bf16 heads with glibc's default malloc (freed memory returned to the system)
megaclass bench heads "${common[@]}" --num-classes 1000000 --dtype bf16 --system-malloc \
  --heads random,knn --budget 0.1 --json "$out/knn-1000000-bf16-system-malloc.json"
python benchmarks/summarize_knn.py "$out" > "$out/knn.md"
