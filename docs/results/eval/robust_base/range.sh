#!/bin/bash
# DistributeK-K / RandomK-K (K = 4, 5, 7, 9, 10) and all 15 blocks of run RR's base (RandomK with a per-image K in
# 4-10, from RB7's base) on val (the last 5,000 training images) and test: the range_*.json reports beside the
# before_*/after_* (RB7) ones. RandomK draws with blockdrop eval's default seed.
#   bash docs/results/eval/robust_base/range.sh
set -e
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
O=docs/results/eval/robust_base
F=docs/results/runs/RR_robust_range4to10_kd/base.safetensors
for split in val test; do
  s=$([ $split = val ] && echo 'train[45000:]' || echo test)
  for pol in distributek randomk; do for k in 4 5 7 9 10; do
    .venv/bin/blockdrop eval --model cifar_resnet32 --pretrained-file $F --data ../shared/data/cifar10 --split "$s" \
      --policy $pol --blocks $k --quiet --json $O/range_${split}_${pol}${k}.json > /dev/null
  done; done
  .venv/bin/blockdrop eval --model cifar_resnet32 --pretrained-file $F --data ../shared/data/cifar10 --split "$s" \
    --policy full --quiet --json $O/range_${split}_full.json > /dev/null
done
