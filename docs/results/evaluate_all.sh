#!/usr/bin/env bash
# Every `blockdrop eval` report behind docs/RESULTS.md, written to docs/results/eval/ (full CIFAR-10 test set,
# 10,000 images), then the plots. Run from the repository root after `make setup`:
#     bash docs/results/evaluate_all.sh [SECTION...]
# sections, in this order: bases gamma sweep_cl baselines_noft baselines_ft release sweep plots publish (default: all). `publish` writes the
# Hub-ready folder release/blockdrop_cifar_resnet20.cifar10 (the ResNet-32 one: docs/results/eval/release.sh) with `blockdrop publish --dry-run` from the
# finetuning runs' final models (docs/results/runs/{FA_g5_plr1e-5,R20_ft_g5}/model), their eval reports and plots.
# SHARED (default ../shared) is the read-only folder with the data and the base checkpoints.
set -euo pipefail
SHARED=${SHARED:-../shared}
DATA=$SHARED/data/cifar10
W=$SHARED/weights/cifar10-resnet
OUT=docs/results/eval
RUNS=docs/results/runs
FINAL=$RUNS/FA_g5_plr1e-5          # the released ResNet-32: curriculum I_H_g0.2, then joint finetuning FA
REPO=blockdrop_cifar_resnet32.cifar10
# every release: repo name, finetuning run, curriculum run, base model (the same two-stage recipe for each)
RELEASES="blockdrop_cifar_resnet32.cifar10:FA_g5_plr1e-5:I_H_g0.2:cifar_resnet32
blockdrop_cifar_resnet20.cifar10:R20_ft_g5:R20_cl_g0.2:cifar_resnet20"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ev() { .venv/bin/blockdrop eval --data "$DATA" --num-workers 0 --quiet "$@"; }
want() { [[ " ${SECTIONS} " == *" $1 "* ]]; }
SECTIONS="${*:-bases gamma sweep_cl baselines_noft baselines_ft release sweep plots publish}"
mkdir -p $OUT/gamma $OUT/threshold_sweep/release $OUT/threshold_sweep/cl_g0.5

if want bases; then  # the full base ResNets (shared checkpoints)
  for d in 20 32 44 56; do
    ev --model cifar_resnet$d --pretrained-file $(ls $W/resnet$d-*.th) --json $OUT/full_cifar_resnet$d.json
  done
fi

if want gamma; then  # one policy per gamma, curriculum only (H: gamma 1; I_H_g*: 0.5, 0.2; same ResNet, frozen)
  ev --checkpoint $RUNS/H_F_plus_policy_init_from_base/model --json $OUT/gamma/cl_g1.json
  ev --checkpoint $RUNS/I_H_g0.5/model --json $OUT/gamma/cl_g0.5.json
  ev --checkpoint $RUNS/I_H_g0.2/model --json $OUT/gamma/cl_g0.2.json
fi

if want baselines_noft; then  # Table 1 heuristics at K = 11 (the finetuned BlockDrop's ~11.4 blocks), no ft
  for p in firstk randomk distributek; do
    ev --model cifar_resnet32 --pretrained-file $W/resnet32-d509ac18.th --policy $p --blocks 11 \
       --json $OUT/resnet32_${p}11_noft.json
  done
fi

if want baselines_ft; then  # the same after finetuning the ResNet under each heuristic (runs K11_*)
  for p in firstk randomk distributek; do
    ev --checkpoint $RUNS/K11_$p/model --policy $p --blocks 11 --json $OUT/resnet32_${p}11_ft.json
  done
fi

if want release; then  # the released models, timed against their full ResNet on the same batches
  for r in $RELEASES; do
    IFS=: read -r repo ft cl base <<< "$r"
    ev --checkpoint $RUNS/$ft/model --compare-full --json $OUT/release_$repo.json
  done
  ev --checkpoint $FINAL/model --compare-full --batch-size 1 --max-samples 2000 --json $OUT/speed_batch1_$REPO.json
fi

if want sweep; then  # the inference budget knob: one trained policy, several greedy thresholds
  for t in 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9; do
    ev --checkpoint $FINAL/model --threshold $t --json $OUT/threshold_sweep/release/t$t.json
  done
fi

if want sweep_cl; then  # the same knob on a curriculum-only policy, beside the curriculum runs per gamma
  for t in 0.2 0.3 0.4 0.5 0.6 0.7 0.8; do
    ev --checkpoint $RUNS/I_H_g0.5/model --threshold $t --json $OUT/threshold_sweep/cl_g0.5/t$t.json
  done
fi

if want plots; then
  .venv/bin/python docs/results/make_plots.py
fi

if want publish; then  # the Hub repo folders, as `blockdrop publish` would upload them (no upload here)
  for r in $RELEASES; do
    IFS=: read -r repo ft cl base <<< "$r"
    # since issue 11 the ResNet-32 release is run JS7, written by docs/results/eval/release.sh
    [[ $repo == blockdrop_cifar_resnet32.cifar10 ]] && continue
    configs=$(mktemp -d)
    cp $RUNS/$cl/config.yaml $configs/curriculum.yaml
    cp $RUNS/$ft/config.yaml $configs/finetune.yaml
    rm -rf release/$repo
    .venv/bin/blockdrop publish --checkpoint $RUNS/$ft/model --repo-id timm-blockdrop/$repo \
      --eval-json $OUT/release_$repo.json --base-eval-json $OUT/full_$base.json --dataset uoft-cs/cifar10 \
      --recipe "curriculum (15 epochs on 5,000 images, gamma 0.2), then joint finetuning (10 epochs, gamma 5, distillation from the full ResNet)" \
      --train-config $configs/curriculum.yaml --train-config $configs/finetune.yaml \
      --train-command "$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["command"])' $RUNS/$cl/run.json)" \
      --train-command "$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["command"])' $RUNS/$ft/run.json)" \
      --plots docs/results/plots/acc_vs_flops.png docs/results/plots/blocks_hist.png docs/results/plots/per_class_policy.png \
      --dry-run release/$repo
    rm -rf $configs
  done
fi
