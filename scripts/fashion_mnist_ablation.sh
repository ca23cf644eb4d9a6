#!/usr/bin/env bash
# The four priors on Fashion-MNIST with the CPU-sized flow, the same number of training steps each, and
# RBM-Flow with the paper's PCD settings as the control (20 chains, 200 sweeps, the flow's Adam for the
# prior); two runs at a time with one thread each (two 2-thread runs on 2 cores are much slower), then
# each run is tested in its directory and the report is written. Usage:
#   scripts/fashion_mnist_ablation.sh [DATA_ROOT] [STEPS] [OUT] [RUN ...]
#   defaults: ../shared/data, 3000, runs/fashion_mnist, all of: rbm rbm_control bernoulli multicov gaussian
#   also: rbm_averaged, the README's averaged-prior rows (rbm_restart.yaml + prior_averaging.yaml),
#   rbm_tempering, round 13's rows (rbm_tempering.yaml + prior_averaging.yaml), rbm_decay,
#   round 14's (the same + rbm_decay.yaml, whose rate falls tenfold every 3,000 steps whatever STEPS), and
#   rbm_ladder, round 15's (the same + rbm_ladder_samples.yaml: validation samples from the training ladder)
# Runs go to OUT/<run> with their logs OUT/<run>.fit.log and .test.log, the report to OUT/report (report-2,
# report-3... when that exists). An earlier run's directory or logs stop the script before anything starts:
# move them away first. A failed run fails the script (exit status 1) once the others end; no report then.
set -euo pipefail
set -o noclobber  # a log is never replaced
root=${1:-../shared/data}
steps=${2:-3000}
out=${3:-runs/fashion_mnist}
shift $(($# < 3 ? $# : 3))
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(rbm rbm_control bernoulli multicov gaussian)
ebmflow=${EBMFLOW:-.venv/bin/ebmflow}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

one() {
  local run=$1 prior=${1%_*} extra=()
  case $run in
    rbm_control)
      extra=(--model.prior_optimizer null --model.prior_lr null
             --model.prior.init_args.sampler priors.BlockGibbs
             --model.prior.init_args.sampler.init_args.steps 200
             --model.prior.init_args.sampler.init_args.chains 20) ;;
    rbm_averaged)
      extra=(--config conf/fashion_mnist/rbm_restart.yaml --config conf/prior_averaging.yaml) ;;
    rbm_tempering)
      extra=(--config conf/fashion_mnist/rbm_tempering.yaml --config conf/prior_averaging.yaml) ;;
    rbm_decay)
      extra=(--config conf/fashion_mnist/rbm_tempering.yaml --config conf/fashion_mnist/rbm_decay.yaml
             --config conf/prior_averaging.yaml) ;;
    rbm_ladder)
      extra=(--config conf/fashion_mnist/rbm_tempering.yaml --config conf/fashion_mnist/rbm_decay.yaml
             --config conf/fashion_mnist/rbm_ladder_samples.yaml --config conf/prior_averaging.yaml) ;;
  esac
  local configs=(--config conf/fashion_mnist.yaml --config "conf/fashion_mnist/$prior.yaml"
                 --config conf/fashion_mnist/cpu_small.yaml
                 --data.init_args.root "$root" --trainer.enable_progress_bar false
                 --trainer.default_root_dir "$out/$run"
                 "${extra[@]}")
  echo "$(date +%T) fit $run for $steps steps"
  "$ebmflow" fit "${configs[@]}" --trainer.max_steps "$steps" > "$out/$run.fit.log" 2>&1
  echo "$(date +%T) test $run"
  # the uniform-dequantization bound on all 10,000 test images (importance sampling off: 5x faster)
  "$ebmflow" test "${configs[@]}" --model.importance_samples 0 --ckpt_path "$out/$run/checkpoints/last.ckpt" \
    > "$out/$run.test.log" 2>&1
  echo "$(date +%T) done $run"
}

known=" rbm rbm_control rbm_averaged rbm_tempering rbm_decay rbm_ladder bernoulli multicov gaussian "
for run in "${runs[@]}"; do  # every name and every output checked before anything runs
  if [[ $known != *" $run "* ]]; then
    echo "error: unknown run $run: the runs are${known% }" >&2
    exit 2
  fi
  for path in "$out/$run" "$out/$run.fit.log" "$out/$run.test.log"; do
    if [ -e "$path" ]; then
      echo "error: $path exists (an earlier run): move it away or give another OUT; nothing was started" >&2
      exit 2
    fi
  done
done
mkdir -p "$out"
pids=()
for run in "${runs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done  # a failure is collected below
  one "$run" &
  pids+=($!)
done
failed=()
for i in "${!runs[@]}"; do
  wait "${pids[$i]}" || failed+=("${runs[$i]}")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "error: ${failed[*]} failed (see $out/<run>.fit.log and .test.log); no report written" >&2
  exit 1
fi
report=$out/report n=1
while [ -e "$report" ]; do n=$((n + 1)) && report=$out/report-$n; done
"$ebmflow" report "${runs[@]/#/$out/}" --out "$report"
