"""The experiment driver: every run under `results/` is one study's variant and seed, named here.

`python experiments/run.py STUDY VARIANT --seed N` trains the variant with `train` (the function behind `cifar_train`)
into `results/STUDY/VARIANT-sN`, or continues it if a checkpoint is there, then tests its model three ways: plainly
(`eval.json`), with mirror TTA (`eval-tta.json`) and with mirror+shift TTA (`eval-tta-shift.json`); a screen scored on
training images held out (`valid_pct`) is not tested, so that choosing among its variants leaves the test images alone. The headline
runs of the README are the study `headline`: seed 0 goes into `results/VARIANT`, seed N into `results/VARIANT-sN`, and
only they keep `model.pkl` and `top_losses.png` (every run keeps `model.safetensors` and its other plots). The data come from `$CIFAR10_DATA`.
A run longer than a session is stopped (`--stop_after N`, or `kill`) and committed with its checkpoint (`git add -f`), and
the same command continues it in the next session.

A study's variants are the settings they change from `TRAIN_DEFAULTS`. Runs made before a change of the library
(the augmentation fix, a default that moved) record the commit of their code in `metrics.json`; rerunning their
variant today measures today's code. `python experiments/run.py --studies` prints every study and variant."""
import os, signal, sys
from functools import partial
from pathlib import Path
from fastcore.script import Param, call_parse, store_true
from cifar_fastai.cli import cifar_eval, set_threads
from cifar_fastai.model import ARCH_BUDGETS, ARCHS, CifarNet
from cifar_fastai.train import train

# Networks that were screened but not registered in the library; `main` registers them for its runs
SCREENED_ARCHS = dict(
    c4w160 = partial(CifarNet, widths=(16,32,64,160), kinds=('conv','conv','dilated','sep'), down='stride'), # the first default
    w_sep = partial(CifarNet, widths=(16,48,96,160), kinds=('conv','conv','sep_dilated','sep'), down='stride', n_res=(2,1,2,1)),
    all_sep = partial(CifarNet, widths=(16,48,96,144), kinds=('conv','sep','sep_dilated','sep'), down='stride', n_res=(2,2,2,2)),
    tiny_wide = partial(CifarNet, widths=(32,32,36,40), kinds=('sep','sep','sep_dilated','sep'), down='stride')) # tiny_sep's C1 twice as wide, paid for with a shallower C2 and a narrower C4
SCREENED_BUDGETS = dict(tiny_wide=20_000) # the parameter budgets of those under 20k (the others are under 200k, the default)

SHORT = dict(epochs=8, subset=0.2) # screening: 8 epochs on a stratified fifth of the training images, the whole test split
OLD_RECIPE = dict(label_smoothing=0, wd=0.01) # fastai's defaults, before label smoothing 0.1 and weight decay 0.05 measured better
TEACHER = 'results/baseline/default-s0/model.safetensors' # `default` with tied augmentations, 85.08%
WIDE_TEACHER = 'results/candidates/wide-40ep-s0/model.safetensors' # `wide` over 40 epochs, 86.84%

STUDIES = {
    'headline': { # the README's rows; `default` is `cifar_train` with no options
        'default': {},
        'fast15': dict(arch='wide', epochs=15, dropout_p=0.1, teacher=WIDE_TEACHER), # screen15's wide-drop0.1, taught by wide over 40 epochs
        'under50k': dict(arch='small_deep', epochs=60, dropout_p=0.1, teacher=WIDE_TEACHER), # small_deep over 60 epochs, the hole in one image in ten, taught by wide over 40 epochs
        'under20k': dict(arch='tiny_sep', epochs=150, dropout_p=0.1, teacher=WIDE_TEACHER)}, # candidates' tiny_sep-150ep-drop0.1-kd, taught by wide over 40 epochs instead of default
    'screen15': { # levers for 85% in 15 epochs, each against `default` at the same budget, two seeds
        'default': dict(epochs=15), 'drop0.1': dict(epochs=15, dropout_p=0.1), 'ema': dict(epochs=15, ema=0.999),
        'ls0.2': dict(epochs=15, label_smoothing=0.2), 'sgd': dict(epochs=15, opt='sgd', lr=0.1, wd=5e-3),
        'whiten': dict(epochs=15, whiten=True), 'deep': dict(arch='deep', epochs=15),
        'light': dict(epochs=15, dropout_p=0.1, label_smoothing=0), 'wide': dict(arch='wide', epochs=15),
        'bnlr8': dict(epochs=15, bn_bias_lr_mult=8), 'wide-drop0.1': dict(arch='wide', epochs=15, dropout_p=0.1)},
    'screen20k': { # layouts under 20k parameters at 15 epochs, two seeds, scored on a tenth of the training images held out
        'tiny_sep': dict(arch='tiny_sep', epochs=15, dropout_p=0.1, valid_pct=0.1), 'tiny_wide': dict(arch='tiny_wide', epochs=15, dropout_p=0.1, valid_pct=0.1)},
    'independent-augs': { # the first runs after the three augmentations were made to draw independently
        'default-lrfind': dict(lr_find=True)},
    'baseline': { # the registered variants with tied augmentations (before commit d3cb96a)
        'default': {}, 'default-15ep': dict(epochs=15), 'default-20ep': dict(epochs=20), 'default-30ep': dict(epochs=30),
        'default-50ep': dict(epochs=50), 'base-ls0.1-wd0.05': dict(arch='base'), 'base-ls0.1-wd0.05-50ep': dict(arch='base', epochs=50),
        'base-15ep': dict(arch='base', epochs=15), 'base-ls0-wd0.01': dict(arch='base', **OLD_RECIPE),
        'small-30ep': dict(arch='small', epochs=30), 'small-50ep': dict(arch='small', epochs=50), 'tiny-50ep': dict(arch='tiny', epochs=50)},
    'exploratory': {
        'default-c4w160-24ep': dict(arch='c4w160', epochs=24, **OLD_RECIPE)},
    'downsampling': { # strided or dilated downsampling, screened
        'stride': dict(arch='base', **SHORT, **OLD_RECIPE), 'dilated': dict(arch='dilated', **SHORT, **OLD_RECIPE)},
    'screening': { # wider with separable convolutions, screened
        'default': SHORT, 'w_sep': dict(arch='w_sep', **SHORT), 'all_sep': dict(arch='all_sep', **SHORT)},
    'candidates': { # longer runs of the variants screened for the goals
        'deep-15ep': dict(arch='deep', epochs=15), 'deep-15ep-bs64': dict(arch='deep', epochs=15, bs=64),
        'deep-15ep-bs64-lr1e-2': dict(arch='deep', epochs=15, bs=64, lr=1e-2), 'deep-15ep-bs64-wd01': dict(arch='deep', epochs=15, bs=64, wd=0.01),
        'deep-20ep-bs64': dict(arch='deep', epochs=20, bs=64), 'small_deep-60ep': dict(arch='small_deep', epochs=60),
        'tiny_deep-60ep': dict(arch='tiny_deep', epochs=60), 'tiny_deep-60ep-ls0': dict(arch='tiny_deep', epochs=60, label_smoothing=0),
        'tiny_deep-60ep-wd0.1': dict(arch='tiny_deep', epochs=60, wd=0.1), 'tiny_deep-60ep-wd01': dict(arch='tiny_deep', epochs=60, wd=0.01),
        'tiny_deep-90ep': dict(arch='tiny_deep', epochs=90), 'tiny_sep-60ep': dict(arch='tiny_sep', epochs=60),
        'tiny_sep-90ep': dict(arch='tiny_sep', epochs=90), 'tiny_sep-90ep-kd': dict(arch='tiny_sep', epochs=90, teacher=TEACHER),
        'tiny_sep-150ep': dict(arch='tiny_sep', epochs=150), 'tiny_sep-150ep-drop0.1': dict(arch='tiny_sep', epochs=150, dropout_p=0.1),
        'tiny_sep-150ep-drop0.1-kd': dict(arch='tiny_sep', epochs=150, dropout_p=0.1, teacher=TEACHER),
        'wide-40ep': dict(arch='wide'), # `wide`, kept by screen15, over the default's 40 epochs
        'small_deep-40ep-drop0.1-kd-wide': dict(arch='small_deep', epochs=40, dropout_p=0.1, teacher=WIDE_TEACHER)}, # the first headline under50k, taught by wide, before it trained 60 epochs
}

def run_folder(study, variant, seed, results='results') -> Path:
    "Where the run of `variant` of `study` with `seed` lives"
    if study=='headline': return Path(results)/(variant if seed==0 else f'{variant}-s{seed}')
    return Path(results)/study/f'{variant}-s{seed}'

def variant_settings(study, variant) -> dict:
    "The settings `study`'s `variant` gives `train`, refusing names that are not in `STUDIES`"
    if study not in STUDIES: raise SystemExit(f"unknown study {study!r}: choose one of {', '.join(STUDIES)}")
    if variant not in STUDIES[study]: raise SystemExit(f"{study} has no variant {variant!r}: choose one of {', '.join(STUDIES[study])}")
    return STUDIES[study][variant]

def evaluate_run(out, data):
    "Test `out`'s model with `cifar_eval` plainly, with mirror TTA and with mirror+shift TTA, into the eval files it does not have yet"
    for name,tta,shift in (('eval', False, 0), ('eval-tta', True, 0), ('eval-tta-shift', True, 1)):
        if not (out/f'{name}.json').exists(): cifar_eval(model=out/'model.safetensors', data=data, tta=tta, shift=shift, json_out=out/f'{name}.json')

@call_parse
def main(
    study:Param("a study of `STUDIES`", str, opt=False, nargs='?')=None,
    variant:Param("one of its variants", str, opt=False, nargs='?')=None,
    seed:int=0, # random seed
    stop_after:int=None, # stop after this epoch of the schedule; the command with a later one, or none, continues the run
    num_workers:int=None, # data loader processes (default: one per core, up to 8)
    threads:int=None, # PyTorch's CPU threads
    studies:store_true=False, # print every study and variant, with its settings
):
    "Train `variant` of `study` with `seed` into its run folder (or continue it), then test its model three ways, unless it is a screen scored on held-out training images"
    if studies:
        for s,vs in STUDIES.items(): print('\n'.join(f"{s} {v} {kw}" for v,kw in vs.items()))
        return
    if study is None or variant is None: raise SystemExit("name a STUDY and a VARIANT (--studies prints them)")
    settings,out = variant_settings(study, variant),run_folder(study, variant, seed)
    data = os.environ.get('CIFAR10_DATA')
    if not data: raise SystemExit("set CIFAR10_DATA to the CIFAR-10 folder or .tgz to train on")
    ARCHS.update(SCREENED_ARCHS); ARCH_BUDGETS.update(SCREENED_BUDGETS)
    set_threads(threads)
    signal.signal(signal.SIGTERM, signal.default_int_handler) # `kill` stops a run the way Ctrl-C does
    again = f"continue with the same command: python {' '.join(sys.argv)}"
    try:
        if (out/'metrics.json').exists(): pass
        elif (out/'checkpoint.pth').exists(): m = train(data, resume=out, stop_after=stop_after, num_workers=num_workers, progress=False)
        else: m = train(data, seed=seed, out=out, stop_after=stop_after, num_workers=num_workers, progress=False, **settings)
    except KeyboardInterrupt:
        sys.exit(f"{out}: interrupted; " + (again if (out/'checkpoint.pth').exists() else "no epoch was saved"))
    if not (out/'metrics.json').exists(): sys.exit(f"{out}: stopped after epoch {m['stopped_after']}; {again}, with a later --stop_after or none")
    if settings.get('valid_pct') is None: evaluate_run(out, data) # a screen scored on held-out training images leaves the test images alone
    if study!='headline': # model.safetensors is enough, and results/ stays small: model.pkl and top_losses.png only in headline runs
        for f in ('model.pkl', 'top_losses.png'): (out/f).unlink(missing_ok=True)
