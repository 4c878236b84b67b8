#!/usr/bin/env bash
# Reproduces benchmarks/results/products.md: what head.matmul_dtype = "auto" and
# head.chunk_size = 8192 rest on. 2 threads, dim 128, batch 1024, plain softmax.
#  1. full and naive at 10,000 classes in fp32 and bf16 (bf16 is emulated on CPUs without
#     AVX-512 BF16 or AMX: keep the class count small there);
#  2. full at 100,000 classes in fp32 with chunks of 4,096 and 8,192 classes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
common=(--dim 128 --batch 1024 --threads 2 --steps 3 --margin softmax)
for dtype in fp32 bf16; do
  megaclass bench heads "${common[@]}" --num-classes 10000 --dtype "$dtype" --heads naive,full \
    --json "$out/products-10000-${dtype}.json"
done
for chunk in 4096 8192; do
  megaclass bench heads "${common[@]}" --num-classes 100000 --dtype fp32 --heads full \
    --chunk-size "$chunk" --json "$out/chunk-100000-${chunk}.json"
done
python benchmarks/summarize_products.py "$out" > "$out/products.md"
