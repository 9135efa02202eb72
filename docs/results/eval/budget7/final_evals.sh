#!/bin/bash
# Final numbers of the budgeted ResNet-32 (JB7): val (selection) and test (final), speed against the full model
# (--compare-full, batch 256 and batch 1), and blockdrop compare against the static ResNets. 2 threads, nothing else
# training.

cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
M=${1:-docs/results/runs/JB7_budget7_joint/model}
O=${2:-docs/results/eval/budget7}; mkdir -p $O
B=.venv/bin/blockdrop
D=../shared/data/cifar10
W=../shared/weights/cifar10-resnet
$B eval --checkpoint $M --data $D --split 'train[45000:]' --quiet --json $O/val_jb7.json > $O/val_jb7.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --json $O/test_jb7_b256.json > $O/test_jb7_b256.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --batch-size 1 --max-samples 2000 --json $O/test_jb7_b1.json > $O/test_jb7_b1.txt 2>&1
$B compare --data $D --batch-size 256 --threads 2 --json $O/compare_b256.json --plot $O/compare_b256.png \
   $M release/blockdrop_cifar_resnet32.cifar10 release/blockdrop_cifar_resnet20.cifar10 \
   cifar_resnet20=$W/resnet20-12fca82f.th cifar_resnet32=$W/resnet32-d509ac18.th cifar_resnet44=$W/resnet44-014dd654.th > $O/compare_b256.txt 2>&1
$B compare --data $D --batch-size 1 --max-samples 1000 --time-batches 200 --threads 2 --json $O/compare_b1.json --plot $O/compare_b1.png \
   $M cifar_resnet20=$W/resnet20-12fca82f.th cifar_resnet32=$W/resnet32-d509ac18.th > $O/compare_b1.txt 2>&1

