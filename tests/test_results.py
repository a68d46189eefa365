"""The committed run folders in `results/` stay usable: each `weights.pth` loads into the network its `metrics.json` names,
each `model.safetensors` loads alone and holds the same weights as the run's other model file, each model meets the
assignment's rules, and the folder stays small: `model.pkl` only in the headline runs, the rest keeping their weights"""
import csv, json
from pathlib import Path
from unittest.mock import patch
import pytest
from fastcore.basics import ifnone
from cifar_fastai.model import ARCH_BUDGETS, ARCHS, check_rules, count_params, get_model
from cifar_fastai.inference import load_model

RESULTS = Path(__file__).resolve().parents[1]/'results'
RUNS = sorted(f.parent for f in RESULTS.rglob('metrics.json'))
IN_PROGRESS = sorted(f.parent for f in RESULTS.rglob('checkpoint.pth') if not (f.parent/'metrics.json').exists()) # committed mid-schedule, to be continued
MODEL_FILES = ('model.pkl', 'model.safetensors', 'weights.pth') # the first a run has is the one its tests load

@pytest.fixture(autouse=True, scope='module')
def screened_archs():
    "The driver's screened networks and their budgets, registered as the driver registers them for its runs, so that their model files load"
    ex = _driver()
    with patch.dict(ARCHS, ex.SCREENED_ARCHS), patch.dict(ARCH_BUDGETS, ex.SCREENED_BUDGETS): yield

def model_file(run):
    "The model file of `run` that the tests load: its `model.pkl` where it has one"
    return next((run/f for f in MODEL_FILES if (run/f).exists()), None)

def test_results_small():
    "`results/` stays under 60 MB (a run adds about 0.8 MB), with no file over 1 MB (no dataset, and no checkpoint but a small network's) and `model.pkl` (the weights and the pickled `Learner`) in at most 12 headline runs"
    sizes = {f:f.stat().st_size for f in RESULTS.rglob('*') if f.is_file()}
    assert sum(sizes.values()) < 60e6
    assert not [f for f,n in sizes.items() if n > 1e6]
    assert len(list(RESULTS.rglob('model.pkl'))) <= 12

@pytest.mark.parametrize('run', [r for r in RUNS if (r/'weights.pth').exists()], ids=lambda r: str(r.relative_to(RESULTS)))
def test_weights_load_under_recorded_arch(run):
    "Changing an `ARCHS` spec that a committed run was trained with makes this fail: register a new name instead"
    model = load_model(run/'weights.pth')[0]
    assert count_params(model) == json.loads((run/'metrics.json').read_text())['params']

@pytest.mark.parametrize('run', [r for r in RUNS if (r/'model.safetensors').exists()], ids=lambda r: str(r.relative_to(RESULTS)))
def test_safetensors_match_run(run):
    "A committed `model.safetensors` carries its run's arch, classes, statistics and accuracy, and the weights of its other model file"
    import torch
    m = json.loads((run/'metrics.json').read_text())
    other = next((run/f for f in ('model.pkl', 'weights.pth') if (run/f).exists()), run/'model.safetensors')
    st,pkl = load_model(run/'model.safetensors'),load_model(other)
    assert (st.vocab, count_params(st.model)) == (m['vocab'], m['params'])
    assert [x for o in st.stats for x in o] == pytest.approx([x for o in m['stats'] for x in o])
    for (k,a),b in zip(st.model.state_dict().items(), pkl.model.state_dict().values()): assert torch.equal(a, b), k

@pytest.mark.parametrize('run', [r for r in RUNS if r.parent.name=='candidates'], ids=lambda r: r.name)
def test_candidate_is_registered_arch(run):
    "The candidates' weights (`deep`'s trained before it was registered) load into the registered arch, layer for layer"
    model = load_model(model_file(run))[0]
    registered = get_model(json.loads((run/'metrics.json').read_text())['arch'])
    assert repr(registered) == repr(model)
    registered.load_state_dict(model.state_dict())

@pytest.mark.parametrize('run', [r for r in RUNS if model_file(r)], ids=lambda r: str(r.relative_to(RESULTS)))
def test_model_meets_rules(run):
    "Every committed model meets the rules with the parameters its `metrics.json` records"
    m = json.loads((run/'metrics.json').read_text())
    found = check_rules(load_model(model_file(run))[0], ARCH_BUDGETS.get(m['arch'], 200_000))
    assert (found['params'], found['receptive_field']) == (m['params'], m['receptive_field'])

@pytest.mark.parametrize('run', RUNS, ids=lambda r: str(r.relative_to(RESULTS)))
def test_metrics_match_history(run):
    "A run's final and best accuracy on the split it is scored on (test, or held-out training images) are those of its own per-epoch history"
    from cifar_fastai.data import held_out_name
    m = json.loads((run/'metrics.json').read_text())
    split = held_out_name(m.get('valid_pct'))
    accs = [float(r[f'{split}_accuracy']) for r in csv.DictReader((run/'history.csv').open())]
    assert len(accs) == m['epochs']
    assert m[f'{split}_accuracy'] == pytest.approx(accs[-1])
    assert m[f'best_{split}_accuracy'] == pytest.approx(max(accs))

def _driver():
    "The experiment driver, `experiments/run.py`, as a module"
    import importlib.util
    spec = importlib.util.spec_from_file_location('experiment', RESULTS.parent/'experiments'/'run.py')
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module

def _settings(run):
    "The settings a run recorded, in today's terms: `None` weight decay was fastai's 0.01, and runs before `dropout_p` used 0.5, before `ema` had none, before `opt` used Adam, before `whiten` started from a random first layer, before `bn_bias_lr_mult` trained the BatchNorm biases at the LR of the rest, before `mixup` trained on whole images, and before `valid_pct` were scored on the test images"
    r = json.loads(((run/'run.json') if (run/'run.json').exists() else (run/'metrics.json')).read_text())
    return dict(epochs=r['epochs'], bs=r['bs'], subset=r['subset'], label_smoothing=r['label_smoothing'], wd=ifnone(r['wd'], 0.01),
                dropout_p=r.get('dropout_p', 0.5), ema=r.get('ema'), opt=r.get('opt', 'adam'), whiten=r.get('whiten', False), bn_bias_lr_mult=r.get('bn_bias_lr_mult', 1), mixup=r.get('mixup'), valid_pct=r.get('valid_pct'), lr=r['lr'], teacher=bool(r.get('teacher')), seed=r['seed'])

@pytest.mark.parametrize('run', RUNS+IN_PROGRESS, ids=lambda r: str(r.relative_to(RESULTS)))
def test_run_is_a_driver_variant(run):
    "Every run folder is `results/STUDY/VARIANT-sSEED` (or a headline folder) of a variant in the driver's `STUDIES`, with its settings and network"
    from cifar_fastai.learner import TRAIN_DEFAULTS
    ex = _driver()
    rel = run.relative_to(RESULTS)
    study,name = ('headline', rel.name) if len(rel.parts)==1 else rel.parts
    variant,seed = (name,0) if study=='headline' and '-s' not in name else (name.rsplit('-s', 1)[0], int(name.rsplit('-s', 1)[1]))
    assert ex.run_folder(study, variant, seed) == Path('results')/rel
    kw = {**TRAIN_DEFAULTS, **ex.variant_settings(study, variant)}
    want = dict(epochs=kw['epochs'], bs=kw['bs'], subset=kw['subset'], label_smoothing=kw['label_smoothing'], wd=kw['wd'],
                dropout_p=kw['dropout_p'], ema=kw['ema'], opt=kw['opt'], whiten=kw['whiten'], bn_bias_lr_mult=kw['bn_bias_lr_mult'], mixup=kw['mixup'], valid_pct=kw['valid_pct'], lr=kw['lr'], teacher=bool(kw.get('teacher')), seed=seed)
    got = _settings(run)
    if kw.get('lr_find'): want['lr'] = got['lr'] # the finder chose it
    assert got == want
    arch = ARCHS[kw['arch']] # the screened networks too (`screened_archs`)
    if run in RUNS: assert count_params(arch(n_out=10)) == json.loads((run/'metrics.json').read_text())['params'], "another network than the variant's"
    else: # a run in progress: it continues with the arch it recorded, and its checkpoint holds the variant's network
        assert json.loads((run/'run.json').read_text())['arch'] == kw['arch']
        arch(n_out=10).load_state_dict(_checkpoint(run)['model'])
    assert f"python experiments/run.py {study} {variant} --seed {seed}" in (run/'command.txt').read_text()

def _checkpoint(run):
    "The training state a run in progress saved after its last epoch"
    import torch
    return torch.load(run/'checkpoint.pth', map_location='cpu', weights_only=False) # our own file: it holds the random states

@pytest.mark.parametrize('run', IN_PROGRESS, ids=lambda r: str(r.relative_to(RESULTS)))
def test_run_in_progress_can_continue(run):
    "A run committed mid-schedule, to be continued by its command in another session, saved its checkpoint after the last epoch of its history"
    ckpt,rows = _checkpoint(run),list(csv.DictReader((run/'history.csv').open()))
    assert ckpt['epoch'] == len(ckpt['history']) < json.loads((run/'run.json').read_text())['epochs']
    assert len(rows) == ckpt['epoch'], "history.csv has an epoch that checkpoint.pth lacks (stopped between their writes): stop the run with --stop_after before committing it"

def test_ended_runs_keep_no_checkpoint():
    "A run that ended deleted its checkpoint; one committed in progress must have it deleted from the repository too when it ends (`git rm`)"
    assert not [r for r in RUNS if (r/'checkpoint.pth').exists()]
