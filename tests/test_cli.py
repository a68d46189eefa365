"""End-to-end tests of the training app (A): cifar_train, cifar_eval, cifar_predict, cifar_lr_find, cifar_summary, --help"""
import inspect, json, math, re
from pathlib import Path
import pytest
from PIL import Image
from conftest import TOOLS, TRAINED_EPOCHS, cifar_classes, read_history

EPOCH_LINE = re.compile(r'^Epoch (\d+): train loss ([\d.]+), .*test loss ([\d.]+), test accuracy ([\d.]+)%')
METRIC_KEYS = ('test_accuracy', 'best_test_accuracy', 'params', 'receptive_field', 'epochs', 'arch', 'lr', 'bs', 'seed',
               'seconds', 'device', 'versions')
RUN_ARTIFACTS = ('model.pkl', 'model.safetensors', 'metrics.json', 'history.csv', 'curves.png', 'confusion_matrix.png',
                 'top_losses.png') # and lr_find.png with --lr_find (see 08_train)

def assert_png(fname):
    with Image.open(fname) as im:
        assert im.format=='PNG', f"{fname} is not a PNG"
        im.verify()
    with Image.open(fname) as im:
        im.load()
        assert min(im.size) > 10, f"{fname} is only {im.size}"

def test_train_writes_run_folder(trained_run):
    r,run = trained_run
    for f in RUN_ARTIFACTS:
        assert (run/f).is_file(), f"{f} is missing from the run folder {run}: {sorted(p.name for p in run.iterdir())}"
        assert (run/f).stat().st_size > 0, f"{f} is empty"
    for f in RUN_ARTIFACTS:
        if f.endswith('.png'): assert_png(run/f)
    m = json.loads((run/'metrics.json').read_text())
    missing = [k for k in METRIC_KEYS if k not in m]
    assert not missing, f"metrics.json lacks {missing}"
    assert 0 <= m['test_accuracy'] <= 1 and 0 <= m['best_test_accuracy'] <= 1
    assert m['best_test_accuracy'] >= m['test_accuracy']
    assert (m['epochs'],m['arch'],m['bs'],m['seed'],m['dropout_p'],m['lr'],m['label_smoothing']) == (TRAINED_EPOCHS,'tiny',32,0,0.25,0.01,0)
    assert 0 < m['params'] < 20_000 and m['receptive_field'] > 1
    assert isinstance(m['versions'], dict) and 'fastai' in m['versions'] and 'torch' in m['versions']
    assert m['device'] and m['seconds'] >= 0

def test_train_history(trained_run):
    r,run = trained_run
    h = read_history(run)
    for c in ('epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy'): assert c in h.columns, c
    assert list(h.epoch)==list(range(1, TRAINED_EPOCHS+1)), f"one row per epoch expected:\n{h}"
    assert h[['train_loss', 'test_loss']].notna().all().all()
    assert h.train_accuracy.between(0, 1).all() and h.test_accuracy.between(0, 1).all()
    m = json.loads((run/'metrics.json').read_text())
    assert m['test_accuracy'] == pytest.approx(h.test_accuracy.iloc[-1])

def test_train_prints_one_line_per_epoch(trained_run):
    r,run = trained_run
    lines = [l for l in r.out_lines if l.startswith('Epoch')]
    assert len(lines)==TRAINED_EPOCHS, f"expected {TRAINED_EPOCHS} epoch lines: {r!r}"
    for i,l in enumerate(lines):
        mo = EPOCH_LINE.match(l)
        assert mo and int(mo.group(1))==i+1, f"unexpected epoch line {l!r}"
    h = read_history(run)
    assert float(EPOCH_LINE.match(lines[-1]).group(4)) == pytest.approx(100*h.test_accuracy.iloc[-1], abs=0.006)

def independent_accuracy(model_file, data, views=1, shift=0) -> float:
    """Test accuracy of a run's `model.safetensors` on `data`, computed here without the package's inference code: PIL
    decoding, NumPy normalisation and views (the mirror image with `views=2`; each also moved `shift` px each way, with
    `np.pad`'s reflection), and the mean of the softmax over the views"""
    import numpy as np, torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from cifar_fastai.model import get_model
    with safe_open(str(model_file), 'pt') as f: meta = f.metadata()
    vocab,(mean,std) = json.loads(meta['vocab']),json.loads(meta['stats'])
    net = get_model(meta['arch'], n_out=len(vocab))
    net.load_state_dict(load_file(str(model_file)))
    fns = sorted(Path(data, 'test').glob('*/*.png'))
    x = (np.stack([np.asarray(Image.open(f).convert('RGB')) for f in fns])/255. - mean)/std # (N,H,W,C)
    xs = [x, x[:, :, ::-1]][:views]
    if shift:
        pad = np.pad(x, ((0,0), (shift,shift), (shift,shift), (0,0)), mode='reflect')
        h,w = x.shape[1:3]
        moved = [pad[:, shift+dy:shift+dy+h, shift+dx:shift+dx+w] for dx,dy in ((shift,0), (-shift,0), (0,shift), (0,-shift))]
        xs += moved + [o[:, :, ::-1] for o in moved]
    net.eval()
    with torch.no_grad():
        probs = np.mean([net(torch.tensor(v.copy(), dtype=torch.float32).permute(0,3,1,2)).softmax(-1).numpy() for v in xs], 0)
    return float(np.mean(probs.argmax(-1) == np.array([vocab.index(f.parent.name) for f in fns])))

def per_class_images(out) -> dict:
    "The per-class image counts of `cifar_eval`'s table"
    return {c: int(n) for c,n in re.findall(r'^\s*(\w+)\s+(\d+)\s+[\d.]+%$', out, re.M)}

@pytest.mark.parametrize('model', ['model.pkl', 'model.safetensors'])
def test_eval_matches_metrics(cli, trained_run, fake_data, model):
    "cifar_eval measures what training measured, on the test split (its per-class counts), and what an independent computation gives"
    _,run = trained_run
    r = cli.run('cifar_eval', '--model', run/model, '--data', fake_data).ok()
    mo = re.search(r'test accuracy: ([\d.]+)%', r.out)
    assert mo, f"no 'test accuracy: NN.NN%' line: {r!r}"
    m = json.loads((run/'metrics.json').read_text())
    assert mo.group(1) == f"{100*m['test_accuracy']:.2f}", f"cifar_eval {model} disagrees with metrics.json: {r!r}"
    test_counts = {c: len(list((fake_data/'test'/c).glob('*.png'))) for c in cifar_classes()}
    assert per_class_images(r.out) == test_counts, f"the per-class counts are not the test split's {test_counts}: {r!r}"
    assert float(mo.group(1)) >= 90, f"the shared model should have learned the generated classes: {r!r}"
    assert float(mo.group(1)) == pytest.approx(100*independent_accuracy(run/'model.safetensors', fake_data), abs=0.006)

@pytest.mark.parametrize('shift,kind', [(0, 'mirror'), (1, 'mirror+shift')])
def test_eval_tta_json(cli, trained_run, fake_data, tmp_path, shift, kind):
    _,run = trained_run
    r = cli.run('cifar_eval', '--model', run/'model.safetensors', '--data', fake_data, '--tta', '--shift', str(shift), '--json_out', tmp_path/'eval.json').ok()
    mo = re.search(rf'test accuracy with {re.escape(kind)} TTA: ([\d.]+)%', r.out)
    assert mo, f"no 'test accuracy with {kind} TTA: NN.NN%' line: {r!r}"
    res = json.loads((tmp_path/'eval.json').read_text())
    assert res['tta'] is True and res['shift'] == shift, f"eval.json does not record --tta --shift {shift}: {res}"
    assert mo.group(1) == f"{100*res['test_accuracy']:.2f}", f"eval.json disagrees with the output: {res}"
    assert sorted(res['per_class']) == sorted(cifar_classes())
    assert res['test_accuracy'] == pytest.approx(independent_accuracy(run/'model.safetensors', fake_data, views=2, shift=shift), abs=1e-6)

def test_predict(cli, trained_run, fake_data):
    _,run = trained_run
    imgs = [fake_data/'test'/'cat'/'0000.png', fake_data/'test'/'ship'/'0001.png']
    r = cli.run('cifar_predict', '--model', run/'model.pkl', *imgs).ok()
    lines = [l for l in r.out_lines if l.strip()]
    assert len(lines)==2, f"expected one line per image: {r!r}"
    for img,l in zip(imgs, lines):
        mo = re.match(r'^(.+): (\S+) \(([\d.]+)\)$', l)
        assert mo, f"unexpected line {l!r}"
        assert mo.group(1)==str(img)
        assert mo.group(2)==img.parent.name, f"{img} is predicted {mo.group(2)!r} by a model that knows these classes: {r!r}"
        assert 0.5 < float(mo.group(3)) <= 1

def test_predict_batch(cli, trained_run, fake_data, tmp_path):
    "Folders (searched recursively) and files together; a bad file among good ones is named on stderr and the rest predicted; --top_k, --csv, --json_out"
    import pandas as pd
    _,run = trained_run
    alone = tmp_path/'shared'/'model.safetensors' # the model file alone, as it would be shared
    alone.parent.mkdir(); alone.write_bytes((run/'model.safetensors').read_bytes())
    (tmp_path/'broken.png').write_bytes(b'not a png')
    folder = fake_data/'test'/'cat'
    n = len(list(folder.glob('*.png')))
    r = cli.run('cifar_predict', '--model', alone, fake_data/'test'/'ship', tmp_path/'broken.png', folder, '--top_k', 3,
                '--csv', tmp_path/'p.csv', '--json_out', tmp_path/'p.json')
    assert r.rc==2, f"an unreadable image must give exit status 2: {r!r}"
    assert 'Traceback' not in r.err and r.err_lines==[l for l in r.err_lines if 'broken.png' in l] and len(r.err_lines)==1, r
    lines = [l for l in r.out_lines if l.strip()]
    assert len(lines)==2*n, f"one line per readable image: {r!r}"
    for l in lines:
        classes = re.findall(r'(\w+) \(([\d.]+)\)', l.split(': ', 1)[1])
        assert len(classes)==3 and all(c in cifar_classes() for c,_ in classes), l
        probs = [float(p) for _,p in classes]
        assert probs==sorted(probs, reverse=True) and sum(probs) <= 1.001, l
    df = pd.read_csv(tmp_path/'p.csv')
    assert list(df.columns)==['path', 'prediction', 'probability', 'top_k'] and len(df)==2*n
    assert set(df.path)=={str(p) for p in [*(fake_data/'test'/'ship').glob('*.png'), *folder.glob('*.png')]}
    rows = json.loads((tmp_path/'p.json').read_text())['predictions']
    assert [o['prediction'] for o in rows]==list(df.prediction) and all(len(o['top_k'])==3 for o in rows)

def test_predict_tta_is_mean_of_views(cli, trained_run, fake_data, tmp_path):
    "--tta's probability is the mean of the image's and its mirror image's, each predicted alone (not the softmax of their mean logits)"
    import numpy as np
    _,run = trained_run
    # a blend of a dog and a cat, on which the model is unsure: where it is sure, both means give about 1 and 0
    img = tmp_path/'blend.png'
    Image.fromarray(np.mean([np.asarray(Image.open(fake_data/'test'/c/'0000.png')) for c in ('dog', 'cat')], 0).astype(np.uint8)).save(img)
    Image.open(img).transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path/'mirror.png')
    cli.run('cifar_predict', '--model', run/'model.safetensors', img, tmp_path/'mirror.png', '--top_k', 10, '--json_out', tmp_path/'plain.json').ok()
    plain = json.loads((tmp_path/'plain.json').read_text())['predictions']
    cli.run('cifar_predict', '--model', run/'model.safetensors', img, '--tta', '--top_k', 10, '--json_out', tmp_path/'tta.json').ok()
    tta = json.loads((tmp_path/'tta.json').read_text())['predictions'][0]
    p1,p2 = (dict(map(tuple, o['top_k'])) for o in plain)
    assert max(p1.values()) < 0.99, f"the model is sure of the blend, so this test cannot tell the two means apart: {p1}"
    for c,p in tta['top_k']: assert p == pytest.approx((p1[c]+p2[c])/2, abs=2e-4), (c, p, p1[c], p2[c])

def test_lr_find(lr_find_job):
    job,out = lr_find_job
    r = job.result().ok()
    assert (out/'lr_find.png').is_file()
    assert_png(out/'lr_find.png')
    assert 'valley:' in r.out, f"no suggestions printed: {r!r}"
    suggs = dict(re.findall(r'^\s*(valley|slide|minimum|steep): ([\d.e+-]+)$', r.out, re.M))
    assert set(suggs)=={'valley', 'slide', 'minimum', 'steep'}, (
        f"the suggestions are not each on a line of their own (progress bars on stdout?): {suggs}\n{r!r}")
    for k,v in suggs.items(): assert 1e-7 < float(v) < 10, (k, v) # within the range the finder explored
    assert 1e-5 < float(suggs['valley']) < 1, f"a valley at the edge of the range: the finder's loss curve is broken? {r!r}"
    assert '--lr' in r.out, "it does not say how to use the suggestion"

def test_summary_default(summary_job):
    r = summary_job.result().ok()
    assert re.search(r'layer\s+type\s+output_shape\s+params', r.out), f"no table header: {r!r}"
    assert 'Conv2d' in r.out and 'BatchNorm2d' in r.out
    mo = re.search(r'params: ([\d,]+), receptive_field: (\d+), macs: ([\d,]+)', r.out)
    assert mo, f"no totals line: {r!r}"
    table = [l.split() for l in r.out_lines if re.match(r'^\s*\S+\s+[A-Za-z]\w*\s+\[', l)]
    assert int(mo.group(1).replace(',', '')) == sum(int(row[-1]) for row in table) == 171_482 # the layers' sum; the figure the README gives
    assert int(mo.group(2)) == 97 # the figure the model page and the README give

def _options(tool):
    "Every option of `tool`, from the signature of its function"
    import cifar_fastai.cli as cli_mod
    return list(inspect.signature(getattr(cli_mod, tool)).parameters)

# the options each tool has today (a floor: the signature may add more)
KNOWN_OPTIONS = dict(
    cifar_train='data arch epochs lr lr_find bs seed subset valid_pct out label_smoothing wd dropout_p ema opt whiten bn_bias_lr_mult mixup num_workers threads strict force resume stop_after teacher temperature teacher_weight debug',
    cifar_lr_find='data arch bs opt whiten bn_bias_lr_mult mixup subset seed out debug', cifar_eval='model data bs tta shift json_out debug', cifar_predict='images model tta shift top_k csv json_out bs debug',
    cifar_summary='arch rf debug', cifar_bench='data arch bs n_batches epoch num_workers threads json_out debug')

@pytest.mark.parametrize('tool', TOOLS)
def test_help_mentions_every_option(help_jobs, tool):
    r = help_jobs[tool].result().ok()
    assert r.out.startswith('usage:'), r
    for name in dict.fromkeys(_options(tool) + KNOWN_OPTIONS[tool].split()):
        shown = name if name=='images' else f'--{name}'
        assert re.search(rf'(?<![\w-]){re.escape(shown)}(?![\w-])', r.out), f"{tool} --help does not mention {shown}: {r!r}"

def test_train_relative_out(relative_out_job):
    "`--out` relative to the working folder (like the default runs/ARCH-TIME) must work too"
    job,run = relative_out_job
    r = job.result()
    assert r.rc==0, f"training into a relative --out failed: {r!r}"
    for f in ('model.pkl', 'model.safetensors', 'metrics.json', 'history.csv'): assert (run/f).is_file(), f

def test_train_threads(relative_out_job):
    "`--threads 1`: the run trained on one PyTorch thread, as its metrics.json records (on a CPU)"
    job,run = relative_out_job
    job.result().ok()
    device = json.loads((run/'metrics.json').read_text())['device']
    if device.startswith('CPU'): assert device.endswith(', 1 thread'), device

def test_train_valid_pct(screen_job):
    "--valid_pct: the run trains on half the training images and is scored on the other half; its lines, history and metrics say 'valid'"
    job,out = screen_job
    r = job.result().ok()
    assert ', valid loss ' in r.out_lines[0] and r.out_lines[-1].startswith('valid accuracy '), r
    m = json.loads((out/'metrics.json').read_text())
    assert (m['valid_pct'],m['train_images'],m['valid_images']) == (0.5,100,100), m
    assert not [k for k in m if 'test' in k], m
    assert list(read_history(out).columns[3:5]) == ['valid_loss', 'valid_accuracy']

def test_train_with_teacher(student_job, repeat_jobs):
    "--teacher: the run names its teacher and the teacher's training time in metrics.json, and ends elsewhere than the same run without one (`full0`)"
    job,out,teacher = student_job
    job.result().ok()
    m = json.loads((out/'metrics.json').read_text())
    assert (m['teacher'],m['temperature'],m['teacher_weight']) == (str(teacher),4.,0.9), m
    assert m['teacher_seconds'] == json.loads((teacher.parent/'metrics.json').read_text())['seconds'], m
    plain = repeat_jobs['full0'].result().ok()
    h,h0 = read_history(out),read_history(Path(plain.args[plain.args.index('--out')+1]))
    assert list(h.epoch)==list(h0.epoch)==[1, 2, 3]
    assert h.test_loss.iloc[-1] != pytest.approx(h0.test_loss.iloc[-1], abs=1e-6), "the teacher changed nothing"

def test_same_seed_same_first_epoch(repeat_jobs):
    "Two runs with the same --seed and --lr (num_workers 0, CPU) have the same first-epoch history row"
    a,b = (repeat_jobs[k].result().ok() for k in ('full0', 'full0b'))
    ha,hb = (read_history(Path(r.args[r.args.index('--out')+1])) for r in (a, b))
    cols = ['epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'lr']
    ra,rb = ha[cols].iloc[0].to_dict(),hb[cols].iloc[0].to_dict()
    assert ra == pytest.approx(rb, abs=1e-6), f"same seed, different first epoch:\n{ra}\n{rb}"
