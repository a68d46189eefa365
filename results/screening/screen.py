"""Wider with separable convolutions? Short runs (8 epochs on a stratified fifth of the training images, the whole
test split) of `default` and two candidates of about the same size that are not registered in `ARCHS`.
Usage, from the repository root: python results/screening/screen.py PATH_TO_CIFAR10 [SEED]"""
import sys
from functools import partial
from pathlib import Path
from cifar_fastai.model import ARCHS, CifarNet
from cifar_fastai.train import train

# C3 and C4 separable, the parameters they free spent on width (C2 48, C3 96, C4 160) and a second pair in C3
ARCHS['w_sep'] = partial(CifarNet, widths=(16,48,96,160), kinds=('conv','conv','sep_dilated','sep'), down='stride', n_res=(2,1,2,1))
# separable from C2 on, two residual pairs in every block
ARCHS['all_sep'] = partial(CifarNet, widths=(16,48,96,144), kinds=('conv','sep','sep_dilated','sep'), down='stride', n_res=(2,2,2,2))

data,seed = sys.argv[1],int(sys.argv[2]) if len(sys.argv)>2 else 0
for arch in ('all_sep', 'w_sep', 'default'):
    out = Path(f'results/screening/{arch}-s{seed}')
    m = train(data, arch=arch, epochs=8, lr=5e-3, seed=seed, subset=0.2, out=out, progress=False)
    for f in ('model.pkl', 'weights.pth'): (out/f).unlink() # the candidates' weights load only with this script's ARCHS
    print(arch, f"{m['params']:,} params", f"{100*m['test_accuracy']:.2f}%", flush=True)
