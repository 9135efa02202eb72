#!/bin/bash
# One candidate of a release (issue 11): val (selection), test with --compare-full (against its own full base) at
# batch 256 and 1 (first 2,000 images), and how static its learned policy is on val. 2 threads. The reports go to
# OUT_DIR (default: release32/, the ResNet-32 release's).
#   bash docs/results/eval/candidate.sh MODEL_FOLDER NAME [OUT_DIR]
set -e
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
M=$1; N=$2
O=${3:-docs/results/eval/release32}
B=.venv/bin/blockdrop
D=../shared/data/cifar10
$B eval --checkpoint $M --data $D --split 'train[45000:]' --quiet --json $O/${N}_val.json > $O/${N}_val.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --quiet --json $O/${N}_test_b256.json > $O/${N}_test_b256.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --batch-size 1 --max-samples 2000 --quiet --json $O/${N}_test_b1.json \
  > $O/${N}_test_b1.txt 2>&1
.venv/bin/python docs/results/eval/static_policy.py $M $D 'train[45000:]' $O/${N}_static_val.json > /dev/null 2>&1
