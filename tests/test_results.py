"""The committed run folders in `results/` stay usable: each `weights.pth` loads into the network its `metrics.json` names,
each `model.safetensors` loads alone and holds the same weights as the run's other model file, and each model meets the
assignment's rules"""
import csv, json
from pathlib import Path
import pytest
from cifar_fastai.model import ARCH_BUDGETS, check_rules, count_params, get_model
from cifar_fastai.train import load_model

RESULTS = Path(__file__).resolve().parents[1]/'results'
RUNS = sorted(f.parent for f in RESULTS.rglob('metrics.json'))

@pytest.mark.parametrize('run', [r for r in RUNS if (r/'weights.pth').exists()], ids=lambda r: str(r.relative_to(RESULTS)))
def test_weights_load_under_recorded_arch(run):
    "Changing an `ARCHS` spec that a committed run was trained with makes this fail: register a new name instead"
    model = load_model(run/'weights.pth')[0]
    assert count_params(model) == json.loads((run/'metrics.json').read_text())['params']

@pytest.mark.parametrize('run', [r for r in RUNS if (r/'model.safetensors').exists()], ids=lambda r: str(r.relative_to(RESULTS)))
def test_safetensors_match_run(run):
    "A committed `model.safetensors` carries its run's arch, classes, statistics and accuracy, and the weights of its `model.pkl`"
    import torch
    m = json.loads((run/'metrics.json').read_text())
    st,pkl = load_model(run/'model.safetensors'),load_model(run/'model.pkl')
    assert (st.vocab, count_params(st.model)) == (m['vocab'], m['params'])
    assert [x for o in st.stats for x in o] == pytest.approx([x for o in m['stats'] for x in o])
    for (k,a),b in zip(st.model.state_dict().items(), pkl.model.state_dict().values()): assert torch.equal(a, b), k

@pytest.mark.parametrize('run', [r for r in RUNS if r.parent.name=='candidates'], ids=lambda r: r.name)
def test_candidate_is_registered_arch(run):
    "The candidates' networks (`deep`'s trained before it was registered) are the registered arch's: same layers, same weights"
    model = load_model(run/'model.pkl')[0]
    registered = get_model(json.loads((run/'metrics.json').read_text())['arch'])
    assert repr(registered) == repr(model)
    registered.load_state_dict(model.state_dict())

@pytest.mark.parametrize('run', [r for r in RUNS if (r/'model.pkl').exists()], ids=lambda r: str(r.relative_to(RESULTS)))
def test_model_meets_rules(run):
    "Every committed model meets the rules with the parameters its `metrics.json` records"
    m = json.loads((run/'metrics.json').read_text())
    found = check_rules(load_model(run/'model.pkl')[0], ARCH_BUDGETS.get(m['arch'], 200_000))
    assert (found['params'], found['receptive_field']) == (m['params'], m['receptive_field'])

@pytest.mark.parametrize('run', RUNS, ids=lambda r: str(r.relative_to(RESULTS)))
def test_metrics_match_history(run):
    "A run's final and best test accuracy are those of its own per-epoch history"
    m = json.loads((run/'metrics.json').read_text())
    accs = [float(r['test_accuracy']) for r in csv.DictReader((run/'history.csv').open())]
    assert len(accs) == m['epochs']
    assert m['test_accuracy'] == pytest.approx(accs[-1])
    assert m['best_test_accuracy'] == pytest.approx(max(accs))
