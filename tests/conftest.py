"""Shared fixtures for the end-to-end tests of the command-line tools.

Every tool runs as a subprocess: the real console script from the project's virtualenv, on tiny generated data in
pytest's temporary folders, with a timeout. Independent runs are started early on a small thread pool (see `_prestart`)
so that the slow parts (Python + fastai start-up, a few epochs of the `tiny` model) overlap; the tests then just wait
for the results they need.

Environment of the subprocesses: the virtualenv's bin/ first on PATH, CIFAR10_DATA unset, CIFAR_FASTAI_CACHE and
FASTAI_HOME in the session's temporary folder (nothing is written to the home folder), and OMP_NUM_THREADS=1: on a
busy 2-core machine PyTorch's default of one thread per core makes the tiny model 10x slower.
"""
from __future__ import annotations
import hashlib, json, os, shutil, subprocess, sys, tarfile, time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent # the environment running the tests: .venv here, a fresh one in CI
TOOLS = ('cifar_train', 'cifar_lr_find', 'cifar_eval', 'cifar_predict', 'cifar_summary', 'cifar_bench')
TIMEOUT = float(os.environ.get('CIFAR_TEST_TIMEOUT', 300)) # seconds per command (the machine is shared and busy)
JOBS = int(os.environ.get('CIFAR_TEST_JOBS', 3))           # commands run at the same time by the pool
# the settings every training run in the tests shares
TINY = ('--arch', 'tiny', '--bs', '32', '--seed', '0')

# --------------------------------------------------------------------------------------------------- running tools
class Result:
    "The outcome of one command: `args`, `rc`, `out`, `err`, `seconds`"
    def __init__(self, args, rc, out, err, seconds):
        self.args,self.rc,self.out,self.err,self.seconds = args,rc,out,err,seconds
    @property
    def cmd(self): return ' '.join(str(a) for a in self.args)
    @property
    def err_lines(self): return self.err.splitlines()
    @property
    def out_lines(self): return self.out.splitlines()
    def __repr__(self):
        return (f"\n$ {self.cmd}\n[exit status {self.rc}, {self.seconds:.1f}s]\n--- stdout (tail) ---\n{self.out[-3000:]}"
                f"\n--- stderr (tail) ---\n{self.err[-3000:]}")
    def ok(self):
        "Assert the command succeeded"
        assert self.rc==0, f"command failed: {self!r}"
        return self

def tool_path(name) -> str:
    "The console script `name` of the project's virtualenv"
    p = VENV_BIN/name
    if not p.exists(): pytest.fail(f"console script {p} is missing: install the package (pip install -e .)")
    return str(p)

def run_tool(env, tool, *args, cwd=None, timeout=TIMEOUT) -> Result:
    "Run the console script `tool` with `args` as a subprocess and return its `Result`"
    cmd = [tool_path(tool), *map(str, args)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
        err = (e.stderr or b'').decode(errors='replace') if isinstance(e.stderr, bytes) else (e.stderr or '')
        pytest.fail(f"timed out after {timeout}s: {Result([tool, *args], None, out, err, time.time()-t0)!r}")
    return Result([tool, *args], p.returncode, p.stdout, p.stderr, time.time()-t0)

class Job:
    "A command (or a function running several) started on the pool; `.result()` waits for it"
    def __init__(self, fut: Future): self.fut = fut
    def result(self, timeout=None): return self.fut.result(timeout)

class CLI:
    "Runs the tools with the tests' environment, now (`run`) or on a thread pool (`submit`, `submit_fn`)"
    def __init__(self, env, cwd, jobs=JOBS):
        self.env,self.cwd = env,Path(cwd)
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix='cli')
    def run(self, tool, *args, cwd=None, timeout=TIMEOUT) -> Result:
        return run_tool(self.env, tool, *args, cwd=cwd or self.cwd, timeout=timeout)
    def submit(self, tool, *args, **kwargs) -> Job:
        return Job(self.pool.submit(self.run, tool, *args, **kwargs))
    def submit_fn(self, f, *args, **kwargs) -> Job:
        return Job(self.pool.submit(f, *args, **kwargs))

# ------------------------------------------------------------------------------------------------------- helpers
def cifar_classes():
    from cifar_fastai.data import CIFAR_CLASSES
    return list(CIFAR_CLASSES)

def file_hashes(folder) -> dict:
    "sha256 of every file under `folder`, by relative path"
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}

def read_history(run):
    import pandas as pd
    return pd.read_csv(Path(run)/'history.csv')

def make_tgz(fname, folder, arcname=None):
    "Write the folder `folder` as a gzipped tar `fname` (its top-level folder named `arcname`)"
    with tarfile.open(fname, 'w:gz') as tar: tar.add(folder, arcname=arcname or Path(folder).name)
    return Path(fname)

def assert_one_line_error(r: Result, *must):
    "`r` failed cleanly: exit status != 0, exactly one line on stderr, no traceback, and every string of `must` in it"
    assert r.rc not in (0, None), f"expected a failure: {r!r}"
    assert 'Traceback' not in r.out+r.err, f"a traceback was shown: {r!r}"
    assert len(r.err_lines)==1, f"expected exactly one line on stderr, got {len(r.err_lines)}: {r!r}"
    line = r.err_lines[0].lower()
    for m in must: assert m.lower() in line, f"the error message does not mention {m!r}: {r!r}"
    return r.err_lines[0]

# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='session')
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('cli')

@pytest.fixture(scope='session')
def cli_env(session_dir) -> dict:
    "Environment of the tool subprocesses (see the module docstring)"
    env = {k:v for k,v in os.environ.items() if k!='CIFAR10_DATA'}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", CIFAR_FASTAI_CACHE=str(session_dir/'cache'),
               FASTAI_HOME=str(session_dir/'fastai_home'), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               MPLBACKEND='Agg', PYTHONUNBUFFERED='1')
    env.pop('PYTHONPATH', None)
    return env

MY_MODULES = ('test_cli', 'test_reliability', 'test_data')

@pytest.fixture(autouse=True)
def _isolated_env(request, monkeypatch, tmp_path):
    "In-process tests of these modules: caches in a temporary folder, no CIFAR10_DATA"
    if request.module.__name__.split('.')[-1] not in MY_MODULES:
        yield
        return
    monkeypatch.delenv('CIFAR10_DATA', raising=False)
    monkeypatch.setenv('CIFAR_FASTAI_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path/'fastai_home'))
    _clear_fastai_cfg()
    yield
    _clear_fastai_cfg()

def _clear_fastai_cfg():
    "fastai reads FASTAI_HOME once per process (`fastai_cfg` is cached): make it read it again"
    ext = sys.modules.get('fastai.data.external')
    if ext is not None: ext.fastai_cfg.cache_clear()

@pytest.fixture(scope='session')
def cli(cli_env, session_dir):
    work = session_dir/'cwd'
    work.mkdir()
    c = CLI(cli_env, work)
    yield c
    c.pool.shutdown(wait=True, cancel_futures=True)

@pytest.fixture(scope='session')
def fake_data(session_dir, cli_env) -> Path:
    "200 training and 100 test images, 32x32, in fastai's CIFAR layout; its statistics (beside it) and decoded images (in "
    "the tools' cache folder, not the user's) computed up front, so that the runs sharing it do not all write them at once"
    from cifar_fastai.data import make_fake_cifar, dataset_stats
    d = make_fake_cifar(session_dir/'fake', n_train=20, n_test=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('CIFAR_FASTAI_CACHE', cli_env['CIFAR_FASTAI_CACHE'])
        dataset_stats(d)
    return d

def train_args(data, out, epochs, *more, lr='0.01', num_workers=0):
    "Arguments of a tiny, quick `cifar_train` run"
    a = ['--data', data, *TINY, '--epochs', epochs, '--out', out, '--num_workers', num_workers, *more]
    if lr is not None: a += ['--lr', lr]
    return a

# ---- the shared trained run (A): a model that has learned the generated classes (each has its own colour and a white
# column of its own), so that evaluation, prediction and TTA tests can tell a right answer from a wrong one. 10 epochs at
# --lr 0.01 without label smoothing reach 100% test accuracy on this data in about 30 s; 8 reached 100% on one machine
# and 94% on another (the float results of CPU kernels differ), and 2 stayed near chance.
TRAINED_EPOCHS = 10

@pytest.fixture(scope='session')
def trained_job(cli, fake_data, session_dir) -> tuple:
    out = session_dir/'trained'
    return cli.submit('cifar_train', *train_args(fake_data, out, TRAINED_EPOCHS, '--dropout_p', '0.25', '--label_smoothing', '0')), out

@pytest.fixture(scope='session')
def trained_run(trained_job) -> tuple:
    "`(Result, run folder)` of the shared run; fails the tests that need it when the run failed"
    job,out = trained_job
    r = job.result()
    r.ok()
    return r,out

# ---- a run that learns from the shared run (A: --teacher)
def _student(cli, data, out, trained_job):
    "Once the shared run is done, train like `full0` below (3 epochs, --lr 0.01) with its model.safetensors as --teacher"
    job,teacher = trained_job
    job.result()
    return cli.run('cifar_train', *train_args(data, out, 3, '--teacher', teacher/'model.safetensors'))

@pytest.fixture(scope='session')
def student_job(cli, fake_data, session_dir, trained_job) -> tuple:
    out = session_dir/'student'
    return cli.submit_fn(_student, cli, fake_data, out, trained_job), out, trained_job[1]/'model.safetensors'

# ---- identical 3-epoch runs with a given LR (D: seed, stop/resume)
def _stop_then_resume(cli, data, out, num_workers, *more):
    "Run 3 epochs (with the options `more`) stopping after the first, note what the folder holds, try `--resume` with another `--wd` and `--epochs`, then `--resume` it"
    stop = cli.run('cifar_train', *train_args(data, out, 3, '--stop_after', 1, *more, num_workers=num_workers))
    files = sorted(p.name for p in Path(out).iterdir()) if Path(out).exists() else []
    hist = read_history(out) if (Path(out)/'history.csv').exists() else None
    ckpt_epoch = None
    if (Path(out)/'checkpoint.pth').exists():
        import torch
        ckpt_epoch = torch.load(Path(out)/'checkpoint.pth', weights_only=False)['epoch']
    refused = cli.run('cifar_train', '--resume', out, '--wd', '0.1', '--epochs', '40') if stop.rc==0 else None # changed, one to its default
    resume = cli.run('cifar_train', '--resume', out, '--num_workers', num_workers) if stop.rc==0 else None
    return dict(stop=stop, files=files, history=hist, ckpt_epoch=ckpt_epoch, refused=refused, resume=resume, out=Path(out))

@pytest.fixture(scope='session')
def repeat_jobs(cli, fake_data, session_dir) -> dict:
    "Uninterrupted runs (twice with num_workers 0, once with 2) and stop/resume runs (num_workers 0 and 2), same seed and LR; those with 2 workers start whitened, train the BatchNorm biases at 4 times the LR and on mixup blends"
    d = session_dir/'repeat'
    return dict(
        full0=cli.submit('cifar_train', *train_args(fake_data, d/'full0', 3)),
        full0b=cli.submit('cifar_train', *train_args(fake_data, d/'full0b', 3)),
        resumed0=cli.submit_fn(_stop_then_resume, cli, fake_data, d/'resumed0', 0),
        full2=cli.submit('cifar_train', *train_args(fake_data, d/'full2', 3, '--whiten', '--bn_bias_lr_mult', '4', '--mixup', '0.4', num_workers=2)),
        resumed2=cli.submit_fn(_stop_then_resume, cli, fake_data, d/'resumed2', 2, '--whiten', '--bn_bias_lr_mult', '4', '--mixup', '0.4'),
    )

# ---- bad input (B): built up front, run on the pool
@pytest.fixture(scope='session')
def bad_inputs(session_dir, fake_data) -> dict:
    "Broken datasets, archives, models and images for the reliability tests"
    import numpy as np, torch
    from cifar_fastai.data import make_fake_cifar
    from cifar_fastai.model import get_model
    b = session_dir/'bad'
    b.mkdir()
    rnd = lambda n, seed: np.random.default_rng(seed).bytes(n)
    p = dict(missing=b/'does-not-exist')
    # a folder of images without train/ and test/
    flat = b/'flat'
    (flat/'cat').mkdir(parents=True)
    shutil.copy(next((fake_data/'train'/'cat').iterdir()), flat/'cat'/'0000.png')
    (flat/'notes.txt').write_text('not a dataset\n')
    p['flat'] = flat
    # an archive that holds random files, and files that are not archives
    stuff = b/'stuff'
    stuff.mkdir()
    for i in range(3): (stuff/f'file{i}.bin').write_bytes(rnd(500, i))
    p['wrong_layout_tgz'] = make_tgz(b/'wrong_layout.tgz', stuff)
    (b/'junk.tgz').write_bytes(rnd(4096, 10)); p['junk_tgz'] = b/'junk.tgz'
    (b/'junk.txt').write_text('hello\n' * 10); p['junk_txt'] = b/'junk.txt'
    # train/ and test/ with different class folders
    mm = make_fake_cifar(b/'mismatch', n_train=2, n_test=2, classes=['cat', 'dog'])
    (mm/'train'/'zebra').mkdir(); shutil.copy(mm/'train'/'cat'/'0000.png', mm/'train'/'zebra'/'0000.png')
    p['mismatch'] = mm
    # model files that are not models
    (b/'randpkl').mkdir(); (b/'randpkl'/'model.pkl').write_bytes(rnd(2048, 20)); p['rand_pkl'] = b/'randpkl'/'model.pkl'
    meta = dict(arch='tiny', vocab=cifar_classes(), stats=[[0.5]*3, [0.25]*3])
    (b/'randpth').mkdir(); (b/'randpth'/'weights.pth').write_bytes(rnd(2048, 21))
    (b/'randpth'/'metrics.json').write_text(json.dumps(meta)); p['rand_pth'] = b/'randpth'/'weights.pth'
    # a valid (untrained) model, through the safe weights.pth path, for the image tests
    (b/'model').mkdir()
    torch.save(get_model('tiny').state_dict(), b/'model'/'weights.pth')
    (b/'model'/'metrics.json').write_text(json.dumps(meta)); p['good_pth'] = b/'model'/'weights.pth'
    # images: one missing, one not an image
    p['missing_img'] = b/'nothere.png'
    (b/'notimage.png').write_bytes(rnd(1000, 30)); p['bad_img'] = b/'notimage.png'
    p['good_img'] = next((fake_data/'test'/'dog').iterdir())
    # an earlier results file, which --json_out must not replace
    (b/'old.json').write_text('{}'); p['old_json'] = b/'old.json'
    return p

def bad_input_cases(d, p):
    "`{id: (tool, args, strings the one-line message must contain)}`; `d` is a good dataset, `p` the `bad_inputs`"
    out = p['missing'].parent/'out'
    T = lambda *a: ('cifar_train', ['--data', d, *TINY, '--epochs', '1', '--num_workers', '0', '--out', out, *a])
    return {
        'data_missing':   ('cifar_train', ['--data', p['missing'], '--out', out], [str(p['missing'].name), 'does not exist', '--data']),
        'data_no_splits': ('cifar_train', ['--data', p['flat'], '--out', out], ['flat', 'train/', 'test/', '--data']),
        'tgz_not_cifar':  ('cifar_train', ['--data', p['wrong_layout_tgz'], '--out', out], ['wrong_layout.tgz', 'train/', '--data']),
        'not_archive_tgz':('cifar_train', ['--data', p['junk_tgz'], '--out', out], ['junk.tgz', '.tgz']),
        'not_archive_txt':('cifar_train', ['--data', p['junk_txt'], '--out', out], ['junk.txt', '--data']),
        'class_mismatch': ('cifar_train', ['--data', p['mismatch'], '--out', out], ['zebra', 'train/', 'test/']),
        'epochs_0':       (*T('--epochs', '0'), ['epochs', '0']),
        'bs_0':           (*T('--bs', '0'), ['bs', '0']),
        'lr_negative':    (*T('--lr', '-1'), ['lr', '-1']),
        'lr_100':         (*T('--lr', '100'), ['lr', '100']),
        'subset_0':       (*T('--subset', '0'), ['subset', '0']),
        'subset_1.5':     (*T('--subset', '1.5'), ['subset', '1.5']),
        'dropout_p_1.5':  (*T('--dropout_p', '1.5'), ['dropout_p', '1.5']),
        'valid_pct_1':    (*T('--valid_pct', '1'), ['valid_pct', '1', '0.1']),
        'valid_pct_0.01': (*T('--valid_pct', '0.01'), ['valid_pct', '0.01', 'larger']), # 2 of 200 images, for 10 classes
        'ema_1':          (*T('--ema', '1'), ['ema', '1', '0.999']),
        'opt_lion':       (*T('--opt', 'lion'), ['lion', 'adam', 'sgd']),
        'bn_bias_lr_mult_0': (*T('--bn_bias_lr_mult', '0'), ['bn_bias_lr_mult', '0']),
        'mixup_0':        (*T('--mixup', '0'), ['mixup', '0', '0.4']),
        'mixup_bs_1':     (*T('--mixup', '0.4', '--bs', '1'), ['mixup', '--bs', '1']),
        'arch_train':     (*T('--arch', 'resnet9000'), ['resnet9000', 'tiny']),
        'arch_summary':   ('cifar_summary', ['--arch', 'resnet9000'], ['resnet9000', 'tiny']),
        'threads_0':      (*T('--threads', '0'), ['threads', '0', '--threads']),
        'teacher_missing':(*T('--teacher', p['missing']/'model.pkl'), ['model.pkl', 'does not exist', '--teacher']),
        'teacher_weight_2':(*T('--teacher', p['good_pth'], '--teacher_weight', '2'), ['teacher_weight', '2']),
        'eval_model_missing':    ('cifar_eval', ['--model', p['missing']/'model.pkl', '--data', d], ['model.pkl', 'does not exist', '--model']),
        'predict_model_missing': ('cifar_predict', ['--model', p['missing']/'model.pkl', p['good_img']], ['model.pkl', 'does not exist', '--model']),
        'eval_random_pkl':       ('cifar_eval', ['--model', p['rand_pkl'], '--data', d], ['model.pkl', 'not a model']),
        'predict_random_pkl':    ('cifar_predict', ['--model', p['rand_pkl'], p['good_img']], ['model.pkl', 'not a model']),
        'eval_random_pth':       ('cifar_eval', ['--model', p['rand_pth'], '--data', d], ['weights.pth', 'weights']),
        'predict_random_pth':    ('cifar_predict', ['--model', p['rand_pth'], p['good_img']], ['weights.pth', 'weights']),
        'predict_image_missing': ('cifar_predict', ['--model', p['good_pth'], p['missing_img']], ['nothere.png', 'image']),
        'predict_not_image':     ('cifar_predict', ['--model', p['good_pth'], p['bad_img']], ['notimage.png', 'image']),
        'eval_json_exists':      ('cifar_eval', ['--model', p['good_pth'], '--data', d, '--json_out', p['old_json']], ['old.json', 'already exists', '--json_out']),
        'eval_shift_no_tta':     ('cifar_eval', ['--model', p['good_pth'], '--data', d, '--shift', '1'], ['shift', '--tta']),
        'eval_shift_16':         ('cifar_eval', ['--model', p['good_pth'], '--data', d, '--tta', '--shift', '16'], ['16', 'out of range', '--shift']),
        'bench_threads_0':       ('cifar_bench', ['--data', d, '--threads', '0'], ['threads', '0', '--threads']),
        'bench_json_exists':     ('cifar_bench', ['--data', d, '--json_out', p['old_json']], ['old.json', 'already exists', '--json_out']),
    }

def bad_case_ids() -> list:
    "The ids of `bad_input_cases`, for `parametrize`"
    return list(bad_input_cases(Path('d'), defaultdict(lambda: Path('x'))))

@pytest.fixture(scope='session')
def bad_input_jobs(cli, fake_data, bad_inputs) -> dict:
    return {k: (cli.submit(tool, *args), must) for k,(tool,args,must) in bad_input_cases(fake_data, bad_inputs).items()}

# ---- corrupt image (C)
@pytest.fixture(scope='session')
def corrupt_jobs(cli, session_dir) -> dict:
    "Datasets with one corrupt image (random bytes named .png), trained with and without --strict"
    from cifar_fastai.data import make_fake_cifar
    jobs = {}
    for mode in ('warn', 'strict'):
        d = make_fake_cifar(session_dir/f'corrupt_{mode}', n_train=10, n_test=5)
        bad = d/'train'/'cat'/'corrupt_0001.png'
        bad.write_bytes(os.urandom(3000))
        extra = ['--strict'] if mode=='strict' else []
        out = session_dir/f'corrupt_run_{mode}'
        jobs[mode] = (cli.submit('cifar_train', *train_args(d, out, 1, *extra)), bad, out)
    return jobs

# ---- --help of every tool
@pytest.fixture(scope='session')
def help_jobs(cli) -> dict:
    return {t: cli.submit(t, '--help') for t in TOOLS}

# ---- the other single runs started early
@pytest.fixture(scope='session')
def nan_job(cli, fake_data, session_dir):
    """Adam at the largest LR allowed (9.9) diverges only with a weight decay large enough that the decoupled decay
    multiplies the weights by |1-lr*wd| > 1 every step: with these settings (no label smoothing, seed 0, CPU) epochs 1-2
    keep finite losses and the model becomes non-finite in epoch 3 (with --wd 1.5, since the augmentation's three
    transforms draw independently, already in epoch 1). (--lr 9.9 alone never gave a non-finite loss on this data.)"""
    out = session_dir/'nan'
    return cli.submit('cifar_train', *train_args(fake_data, out, 4, '--wd', '0.8', '--label_smoothing', '0', lr='9.9')), out

@pytest.fixture(scope='session')
def lr_find_job(cli, fake_data, session_dir):
    out = session_dir/'lr_find'
    return cli.submit('cifar_lr_find', '--data', fake_data, '--arch', 'tiny', '--bs', '32', '--seed', '0', '--out', out), out

@pytest.fixture(scope='session')
def summary_job(cli):
    return cli.submit('cifar_summary', '--arch', 'default')

@pytest.fixture(scope='session')
def relative_out_job(cli, fake_data, session_dir):
    "A run whose --out is relative to the working folder, as with the default runs/ARCH-TIME (on one PyTorch thread)"
    cwd = session_dir/'relcwd'
    cwd.mkdir()
    return cli.submit('cifar_train', *train_args(fake_data, 'myrun', 1, '--threads', 1), cwd=cwd), cwd/'myrun'

# ---- a screen, scored on half the training images held out
@pytest.fixture(scope='session')
def screen_job(cli, fake_data, session_dir) -> tuple:
    out = session_dir/'screen'
    return cli.submit('cifar_train', *train_args(fake_data, out, 1, '--valid_pct', '0.5')), out

# the fixtures whose commands are started at the beginning of the session, in this order, when a collected test uses them
PRESTART = ('trained_job', 'bad_input_jobs', 'help_jobs', 'repeat_jobs', 'student_job', 'corrupt_jobs', 'nan_job', 'lr_find_job',
            'summary_job', 'relative_out_job', 'screen_job')

@pytest.fixture(scope='session', autouse=True)
def _prestart(request):
    "Start the independent commands that the selected tests need, so that they overlap"
    used = set()
    for item in request.session.items: used.update(getattr(item, 'fixturenames', ()))
    for name in PRESTART:
        if name in used: request.getfixturevalue(name)
