#!/bin/bash
# DistributeK-K / RandomK-K and all blocks of a robust base on val (the last 5,000 training images) and test: the
# PREFIX_{val,test}_{distributek,randomk}K.json and PREFIX_{val,test}_full.json reports in this folder. RandomK draws
# with blockdrop eval's default seed. Defaults: run RR's ResNet-32 base (RandomK with a per-image K in 4-10, from
# RB7's base) at K = 4, 5, 7, 9, 10, as range_*.json beside the before_*/after_* (RB7) ones.
#   bash docs/results/eval/robust_base/range.sh [BASE_FILE MODEL PREFIX "K ..."]
#   e.g. bash docs/results/eval/robust_base/range.sh docs/results/runs/RR56_robust_range9to17_kd/base.safetensors \
#          cifar_resnet56 range56 "9 13 17"
set -e
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
O=docs/results/eval/robust_base
F=${1:-docs/results/runs/RR_robust_range4to10_kd/base.safetensors}
MODEL=${2:-cifar_resnet32}
P=${3:-range}
KS=${4:-4 5 7 9 10}
for split in val test; do
  s=$([ $split = val ] && echo 'train[45000:]' || echo test)
  for pol in distributek randomk; do for k in $KS; do
    .venv/bin/blockdrop eval --model $MODEL --pretrained-file $F --data ../shared/data/cifar10 --split "$s" \
      --policy $pol --blocks $k --quiet --json $O/${P}_${split}_${pol}${k}.json > /dev/null
  done; done
  .venv/bin/blockdrop eval --model $MODEL --pretrained-file $F --data ../shared/data/cifar10 --split "$s" \
    --policy full --quiet --json $O/${P}_${split}_full.json > /dev/null
done
