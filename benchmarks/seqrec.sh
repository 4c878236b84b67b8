#!/usr/bin/env bash
# Reproduces benchmarks/results/seqrec.md and seqrec.png: SASRec on the next-item data sets of
# ../shared/data/seqrec with the full softmax and with knn, ann and random at a 10% budget, over
# seeds, each run the data set's recipe (recipes/seqrec-NAME.toml) with early stopping on
# validation NDCG@10; the table gives test HIT@10 and NDCG@10 at the best validation step.
# Usage: seqrec.sh [NAME...] (default: beauty sports toys video). Environment: SEEDS (default
# "0 1 2"), SAMPLERS (default "full knn ann random"), JOBS runs side by side (default 2, one
# thread each). A finished run leaves its record
# in benchmarks/results/seqrec/ (commit them as they come) and is skipped from then on; an
# interrupted run resumes from its last checkpoint in runs/seqrec/. So a sweep longer than one
# sitting picks up where it stopped, on this machine or, from the committed records, another.
# RECIPE=NAME runs every data set with recipes/seqrec-NAME.toml instead of its own (its data path
# aside), into runs/seqrec-recipe-NAME and benchmarks/results/seqrec-recipe-NAME: does a recipe
# hold on a data set it was not written for? (The table and plot go into that folder.)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=runs/seqrec${RECIPE:+-recipe-$RECIPE}
records=benchmarks/results/seqrec${RECIPE:+-recipe-$RECIPE}
seeds=${SEEDS:-"0 1 2"}
jobs=${JOBS:-2}
samplers=${SAMPLERS:-"full knn ann random"}
[ $# -gt 0 ] || set -- beauty sports toys video
mkdir -p "$runs"
for data in "$@"; do
  for seed in $seeds; do
    for sampler in $samplers; do
      dir="$runs/$data-$sampler-$seed"
      [ -f "$records/$data-$sampler-$seed.json" ] ||
        echo "$data $sampler $seed $dir $records ${RECIPE:-$data}"
    done
  done
done | xargs -P "$jobs" -L 1 sh -c '
  if ls "$4"/checkpoints/step-*/meta.json > /dev/null 2>&1; then
    megaclass train --resume "$4" --set train.threads=1 >> "$4.log" 2>&1
  else
    rm -rf "$4" &&
    data=$(python -c "from megaclass.train.config import load_config
print(load_config(\"recipes/seqrec-$1.toml\").data.path)") &&
    megaclass train --config "recipes/seqrec-$6.toml" --run-dir "$4" --set train.threads=1 \
      --set head.sampler="\"$2\"" --set train.seed="$3" --set data.seed="$3" \
      --set data.path="\"$data\"" > "$4.log" 2>&1
  fi &&
  python benchmarks/summarize_seqrec.py record "$4" "$5" &&
  echo "$4: $(tail -n 2 "$4.log" | tr "\n" " ")"' sh
python benchmarks/summarize_seqrec.py table "$records" benchmarks/results${RECIPE:+/seqrec-recipe-$RECIPE}
