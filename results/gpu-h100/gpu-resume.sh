#!/usr/bin/env bash
# Second device session: resume the two long runs side by side until a deadline, then pack them.
set -u
OUTDIR=$1; DEADLINE=${DEADLINE:-175}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/bin
printf '#!/usr/bin/env python3\nimport sys\nfrom cifar_fastai.cli import cifar_train\nsys.exit(cifar_train())\n' > /tmp/bin/cifar_train; chmod +x /tmp/bin/cifar_train
export PATH=/tmp/bin:$PATH
python3 -c "from cifar_fastai.data import *; p=get_cifar10('data/cifar10_jpeg.tgz'); print(p, dataset_stats(p))" || exit 1
echo "== $(el)s training"
for r in default-50ep small-50ep; do cifar_train --resume results/$r --num_workers 7 > $OUTDIR/$r.log 2>&1 & done
while [ $(el) -lt $DEADLINE ] && pgrep -f cifar_train >/dev/null; do sleep 3; done
echo "== $(el)s stopping"; pkill -INT -f cifar_train; sleep 6; pkill -9 -f cifar_train; wait
for r in default-50ep small-50ep; do cat $OUTDIR/$r.log >> results/$r/train.log; rm $OUTDIR/$r.log; tail -2 results/$r/train.log; tar czf $OUTDIR/$r.tgz results/$r; done
echo "== $(el)s done"
