#!/usr/bin/env bash
# Runs of the experiment driver on a lent GPU machine, side by side, until a deadline.
# From the repository root, with the wheels this project needs in .whl/ and the data in data/ (both git-ignored,
# carried to the machine):
#   DEADLINE=540 bash experiments/gpu.sh OUTDIR "STUDY VARIANT SEED" ["STUDY VARIANT SEED" ...]
# Each run gets its own loader processes (NUM_WORKERS, 6 by default). At DEADLINE seconds the runs still going are
# interrupted: each keeps its last finished epoch in checkpoint.pth, and the same driver command continues it, here or
# on another machine. Only the processes this script started are stopped. Each run folder is packed into OUTDIR.
set -u
OUTDIR=$1; shift
DEADLINE=${DEADLINE:-540}; NUM_WORKERS=${NUM_WORKERS:-6}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1 CIFAR10_DATA=${CIFAR10_DATA:-data/cifar10_jpeg.tgz}
if ! python3 -c 'import fastai' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
echo "== $(el)s $(nvidia-smi -L 2>/dev/null | head -1), $(nproc) cores"
pids=(); folders=(); logs=()
for run in "$@"; do
  read -r study variant seed <<< "$run"
  folder=$(python3 -c "import runpy; print(runpy.run_path('experiments/run.py', run_name='driver')['run_folder']('$study', '$variant', $seed))") || exit 1
  mkdir -p "$(dirname "$folder")"
  log=$OUTDIR/$study-$variant-s$seed.log
  python3 experiments/run.py "$study" "$variant" --seed "$seed" --num_workers "$NUM_WORKERS" > "$log" 2>&1 &
  pids+=($!); folders+=("$folder"); logs+=("$log")
done
running() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while [ "$(el)" -lt "$DEADLINE" ] && running; do sleep 5; done
if running; then
  echo "== $(el)s deadline: interrupting the runs still going"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done # the driver stops on it as on Ctrl-C
  sleep 15
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
fi
wait
for i in "${!folders[@]}"; do
  tail -2 "${logs[$i]}"
  [ -d "${folders[$i]}" ] && tar czf "$OUTDIR/$(echo "${folders[$i]}" | tr / -).tgz" "${folders[$i]}"
done
echo "== $(el)s done"
