#!/usr/bin/env bash
# One device session: three cifar_train runs side by side on one GPU machine, each cut at a deadline
# (an unfinished run keeps its per-epoch checkpoint.pth and is finished elsewhere with --resume),
# plus two resume checks across devices (a CPU checkpoint resumed here; a checkpoint made here for the CPU).
# Usage: bash gpu.sh OUTDIR [EPOCHS_LONG EPOCHS_SHORT SUBSET]
set -u
OUTDIR=$1; LONG=${2:-50}; SHORT=${3:-30}; SUBSET=${4:-}
DEADLINE=${DEADLINE:-540}   # seconds after start when unfinished runs are stopped
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1
if ! python3 -c 'import fastai' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p /tmp/bin
for c in cifar_train cifar_eval; do
  printf '#!/usr/bin/env python3\nimport sys\nfrom cifar_fastai.cli import %s\nsys.exit(%s())\n' $c $c > /tmp/bin/$c; chmod +x /tmp/bin/$c
done
export PATH=/tmp/bin:$PATH
echo "== $(el)s machine"; nproc; nvidia-smi -L 2>/dev/null; lscpu | grep -E 'Model name|^CPU\(s\)|Thread'
python3 -c "import cifar_fastai.cli, torch; from cifar_fastai.data import *; p=get_cifar10('data/cifar10_jpeg.tgz'); print(p, dataset_stats(p), torch.__version__, torch.cuda.is_available())" || exit 1
echo "== $(el)s resume checks"
cifar_train --resume data/resume-cpu --num_workers 2 2>&1 | tail -2
cifar_train --data data/cifar10_jpeg.tgz --arch tiny --epochs 2 --lr 5e-3 --subset 0.01 --seed 0 --stop_after 1 --out data/resume-gpu --num_workers 2 2>&1 | tail -2
sub=${SUBSET:+--subset $SUBSET}
train() { name=$1; shift; cifar_train --data data/cifar10_jpeg.tgz --lr 5e-3 --seed 0 $sub "$@" --out results/$name > $OUTDIR/$name.log 2>&1; }
echo "== $(el)s training"
train default-${LONG}ep --arch default --epochs $LONG --num_workers 6 & a=$!
train small-${LONG}ep --arch small --epochs $LONG --num_workers 6 & b=$!
( renice -n 10 -p $BASHPID >/dev/null; train default-${SHORT}ep --arch default --epochs $SHORT --num_workers 4 ) & c=$!
while [ $(el) -lt $DEADLINE ] && { kill -0 $a || kill -0 $b || kill -0 $c; } 2>/dev/null; do sleep 5; done
echo "== $(el)s stopping what is left"; pkill -INT -f cifar_train; sleep 10; pkill -9 -f cifar_train
wait
for r in default-${LONG}ep small-${LONG}ep default-${SHORT}ep; do
  mv $OUTDIR/$r.log results/$r/train.log; tail -2 results/$r/train.log
  tar czf $OUTDIR/$r.tgz results/$r
done
tar czf $OUTDIR/resume.tgz data/resume-cpu data/resume-gpu
echo "== $(el)s done"
