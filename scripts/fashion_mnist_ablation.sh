#!/usr/bin/env bash
# The four priors on Fashion-MNIST with the CPU-sized flow, the same wall-clock budget each, one after
# the other (so they do not share the CPU); then each run is tested in its directory and the report is
# written. Usage:
#   scripts/fashion_mnist_ablation.sh [DATA_ROOT] [MINUTES]      # defaults: ../shared/data, 20
# Runs go to runs/fashion_mnist/<prior>: move earlier ones away first (fit refuses to mix two logs).
set -euo pipefail
root=${1:-../shared/data}
minutes=${2:-20}
ebmflow=${EBMFLOW:-.venv/bin/ebmflow}
budget=$(printf "00:%02d:%02d:00" $((minutes / 60)) $((minutes % 60)))
priors=(rbm bernoulli multicov gaussian)
for prior in "${priors[@]}"; do
  configs=(--config "conf/fashion_mnist/$prior.yaml" --config conf/fashion_mnist/cpu_small.yaml
           --data.init_args.root "$root" --trainer.enable_progress_bar false)
  echo "$(date +%T) fit $prior for $minutes min"
  "$ebmflow" fit "${configs[@]}" --trainer.max_time "$budget"
  echo "$(date +%T) test $prior"
  "$ebmflow" test "${configs[@]}" --ckpt_path "runs/fashion_mnist/$prior/checkpoints/last.ckpt"
done
"$ebmflow" report "${priors[@]/#/runs/fashion_mnist/}" --out runs/fashion_mnist/report
