#!/usr/bin/env bash
# Strided vs dilated downsampling (README, and the model notebook): short runs (8 epochs on a stratified fifth
# of the training images, the whole test split), two seeds per variant, then each model's accuracy with mirror TTA.
# Usage, from the repository root: results/downsampling/run.sh PATH_TO_CIFAR10 [SEED ...]
set -euo pipefail
data=$1; shift
seeds=${*:-0 1}
# label smoothing 0 and fastai's weight decay 0.01: the recipe of the seed-0 runs, from before those defaults changed
common=(--data "$data" --epochs 8 --lr 5e-3 --subset 0.2 --label_smoothing 0 --wd 0.01)
for seed in $seeds; do
  for variant in stride dilated; do
    out=results/downsampling/$variant-s$seed
    [ -e "$out/metrics.json" ] && continue
    case $variant in
      stride)       extra=(--arch base)    ;;
      dilated)      extra=(--arch dilated) ;;
    esac
    cifar_train "${common[@]}" "${extra[@]}" --seed "$seed" --out "$out" 2>&1 | tee "$out.log"
    mv "$out.log" "$out/train.log"
    cifar_eval --model "$out/weights.pth" --data "$data" --tta --json_out "$out/eval-tta.json"
    rm "$out/model.pkl" # weights.pth with metrics.json is enough to evaluate it, and half the size
  done
done
