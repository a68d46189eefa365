"""Runs on the full data (the JPEG copy in ../shared/data) of architectures not registered in `ARCHS`: the candidate
is added to `ARCHS` for this process, trained with `train` (the same code as `cifar_train`), and evaluated from its
`model.pkl` (which loads anywhere, as it pickles the model itself), plainly and with mirror TTA. Its `weights.pth` is
removed: it loads only under a registered arch.
Usage, from the repository root: python results/candidates/run.py ARCH EPOCHS results/candidates/NAME [key=value ...]
where each key=value is an argument of `train` (lr=5e-3 seed=0 bs=64)."""
import json, sys
from functools import partial
from pathlib import Path
from cifar_fastai.data import get_cifar10
from cifar_fastai.model import ARCHS, CifarNet
from cifar_fastai.train import evaluate, load_model, train

# `default` with a third residual pair in C1 (32x32) and a second in C2 (16x16): depth where the images are large
ARCHS['deep'] = partial(CifarNet, widths=(16,32,64,128), kinds=('conv','conv','dilated','sep'), down='stride', n_res=(3,2,1,1))

arch,epochs,out = sys.argv[1],int(sys.argv[2]),Path(sys.argv[3])
kw = {k:float(v) if '.' in v or 'e-' in v else int(v) for k,v in (o.split('=') for o in sys.argv[4:])}
data = get_cifar10('../shared/data/cifar10_jpeg.tgz')
train(data, arch=arch, epochs=epochs, out=out, progress=False, **kw)
for tta in (False, True):
    acc,_ = evaluate(*load_model(out/'model.pkl'), data, tta=tta)
    (out/f"eval{'-tta' if tta else ''}.json").write_text(json.dumps(dict(tta=tta, test_accuracy=acc), indent=2))
    print(f"{arch}: test accuracy{' with mirror TTA' if tta else ''} {100*acc:.2f}%", flush=True)
(out/'weights.pth').unlink()
