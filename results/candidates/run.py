"""Runs of candidate architectures on the full data (the JPEG copy in ../shared/data): each is trained with `train`
(the same code as `cifar_train`) and evaluated from its `model.pkl`, plainly, with mirror TTA and with mirror+shift
TTA. The `deep-*` runs are of `deep`, `default` with a third residual pair in C1 and a second in C2. It was defined
in this script (`ARCHS['deep'] = partial(CifarNet, ...)`, as a new candidate would be), and its runs' `weights.pth`
removed, until it was registered in `ARCHS`; a `model.pkl` loads anywhere, as it pickles the model itself. The
`small_deep-*` runs are of `small_deep`, `small` with a second residual pair in C2 and C3 56 wide, registered first,
the `tiny_deep-*` runs of `tiny_deep`, the same layers at widths 16, 24, 32, 44 (under 20k parameters), and the
`tiny_sep-*` runs of `tiny_sep`, `tiny_deep` with C1's residual pair separable too and widths 16, 28, 36, 48;
`tiny_sep-90ep-kd` also learns from `results/default`'s predictions (teacher=results/default/model.pkl),
`tiny_sep-150ep-drop0.1` is `tiny_sep-150ep` with CoarseDropout on a tenth of the training images (dropout_p=0.1) instead of half,
`tiny_sep-150ep-drop0.1-kd` is that run learning from `results/default` too, and
`tiny_sep-150ep-drop0.1-kd-s1` the same with seed 1.
Usage, from the repository root: python results/candidates/run.py ARCH EPOCHS results/candidates/NAME [key=value ...]
where each key=value is an argument of `train` (lr=5e-3 seed=0 bs=64 teacher=PATH dropout_p=0.1; stop_after=N stops after N epochs of the
schedule and resume=results/candidates/NAME continues a stopped or interrupted run, so one run can span sessions), or
threads=N, PyTorch's CPU threads (the `tiny_sep-150ep*` runs use threads=1 num_workers=1: see the README's "Training faster on
a small CPU"; a resume must pass them again, as they are not run settings, and the command it prints when stopped or killed does)."""
import json, signal, sys
from pathlib import Path
from cifar_fastai.cli import set_threads
from cifar_fastai.data import get_cifar10
from cifar_fastai.train import evaluate, load_model, train

def value(v):
    "`v` as an int or a float where it reads as one, else as it is (a path)"
    for t in (int, float):
        try: return t(v)
        except ValueError: pass
    return v

def resume_command(out):
    "The command that continues the run in `out`: this one, with resume=`out` and without stop_after"
    kept = [o for o in sys.argv[4:] if o.split('=')[0] not in ('resume', 'stop_after')]
    return ' '.join(['python', *sys.argv[:4], f'resume={out}', *kept])

arch,epochs,out = sys.argv[1],int(sys.argv[2]),Path(sys.argv[3])
kw = {k:value(v) for k,v in (o.split('=') for o in sys.argv[4:])}
set_threads(kw.pop('threads', None))
data = get_cifar10('../shared/data/cifar10_jpeg.tgz')
signal.signal(signal.SIGTERM, signal.default_int_handler) # `kill` stops a run the way Ctrl-C does
try: m = train(data, arch=arch, epochs=epochs, out=out, progress=False, **kw)
except KeyboardInterrupt:
    if not (out/'checkpoint.pth').exists(): sys.exit(f"{arch}: interrupted before the first epoch was saved")
    sys.exit(f"{arch}: interrupted; the last finished epoch is saved in {out}/checkpoint.pth; continue with: {resume_command(out)}")
if 'stopped_after' in m:
    print(f"{arch}: stopped after epoch {m['stopped_after']}; continue with: {resume_command(out)}")
    sys.exit()
for name,tta,shift in (('eval', False, 0), ('eval-tta', True, 0), ('eval-tta-shift', True, 1)):
    acc,_ = evaluate(*load_model(out/'model.pkl'), data, tta=tta, shift=shift)
    (out/f"{name}.json").write_text(json.dumps(dict(tta=tta, shift=shift, test_accuracy=acc), indent=2))
    print(f"{arch}: test accuracy ({name}) {100*acc:.2f}%", flush=True)
