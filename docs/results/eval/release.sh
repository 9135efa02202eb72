#!/bin/bash
# A CIFAR-10 release of issue 11: final numbers of the model chosen on val, its speed against its fused full ResNet
# (batch 256 and 1), blockdrop compare against the static ResNets, its plots, and the Hub folder
# release/blockdrop_cifar_resnet$DEPTH.cifar10 written by blockdrop publish --dry-run. DEPTH is 32 (default: the
# ResNet-32 release, reports in release32/) or 56 (reports in release56/). 2 threads, nothing else training.
#   [DEPTH=56] RECIPE=... bash docs/results/eval/release.sh MODEL_FOLDER RUN_NAME...   (its chain, in order)
set -e
: "${RECIPE:?set RECIPE to the one-line recipe of the chain}"
DEPTH=${DEPTH:-32}
case $DEPTH in
  32) STATIC_B256="20 32 44"; STATIC_B1="20 32" ;;
  56) STATIC_B256="20 32 44 56"; STATIC_B1="20 32 56" ;;
  *) echo "DEPTH must be 32 or 56, got $DEPTH" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
M=$1; shift
RUNS=docs/results/runs
O=docs/results/eval/release$DEPTH
mkdir -p $O
B=.venv/bin/blockdrop
D=../shared/data/cifar10
W=../shared/weights/cifar10-resnet
R=blockdrop_cifar_resnet$DEPTH.cifar10
static() { for d in $1; do echo cifar_resnet$d=$(ls $W/resnet$d-*.th); done; }
$B eval --checkpoint $M --data $D --split 'train[45000:]' --json $O/val.json > $O/val.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --json $O/test_b256.json > $O/test_b256.txt 2>&1
$B eval --checkpoint $M --data $D --compare-full --batch-size 1 --max-samples 2000 --json $O/test_b1.json > $O/test_b1.txt 2>&1
$B compare --data $D --batch-size 256 --threads 2 --json $O/compare_b256.json --plot $O/compare_b256.png \
   $M $(static "$STATIC_B256") > $O/compare_b256.txt 2>&1
$B compare --data $D --batch-size 1 --max-samples 1000 --time-batches 200 --threads 2 --json $O/compare_b1.json \
   --plot $O/compare_b1.png $M $(static "$STATIC_B1") > $O/compare_b1.txt 2>&1

# the release's own plots (block-count histogram, per-class policy) from its test report
tmp=$(mktemp -d); mkdir -p $tmp/eval; cp $O/test_b256.json $tmp/eval/release_$R.json
.venv/bin/python docs/results/make_plots.py --root $tmp > /dev/null
cp $tmp/plots/blocks_hist.png $tmp/plots/per_class_policy.png $O/

# the training chain: each run's resolved config and command
args=(); i=0
for run in "$@"; do
  i=$((i + 1)); cp $RUNS/$run/config.yaml $tmp/$i-$run.yaml
  args+=(--train-config $tmp/$i-$run.yaml
         --train-command "$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["command"])' $RUNS/$run/run.json)")
done
rm -rf release/$R
$B publish --checkpoint $M --repo-id timm-blockdrop/$R --dataset uoft-cs/cifar10 \
  --eval-json $O/test_b256.json --base-eval-json docs/results/eval/full_cifar_resnet$DEPTH.json \
  --speed-json $O/test_b256.json --speed-json $O/test_b1.json --compare-json $O/compare_b256.json \
  --recipe "$RECIPE" "${args[@]}" \
  --plots $O/compare_b256.png $O/blocks_hist.png $O/per_class_policy.png --dry-run release/$R
rm -rf $tmp
