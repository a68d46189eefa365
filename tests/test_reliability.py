"""Reliability of the tools: bad input (B), a corrupt image (C), never losing a run (D)"""
import json, math, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import (REPO, TIMEOUT, TRAINED_EPOCHS, assert_one_line_error, bad_case_ids, file_hashes, read_history, tool_path,
                      train_args)

# ---------------------------------------------------------------------------------------------------- B: bad input
@pytest.mark.parametrize('case', bad_case_ids())
def test_bad_input_one_line_error(bad_input_jobs, case):
    "Exit status != 0, one line on stderr saying what is wrong and what to do, no traceback"
    job,must = bad_input_jobs[case]
    assert_one_line_error(job.result(), *must)

def test_debug_shows_traceback(cli, session_dir):
    r = cli.run('cifar_train', '--data', session_dir/'nowhere', '--out', session_dir/'nowhere_out', '--debug')
    assert r.rc != 0, r
    assert 'Traceback' in r.err and 'DataError' in r.err, f"--debug did not show the traceback: {r!r}"

# ------------------------------------------------------------------------------------------------ C: corrupt image
def test_corrupt_image_is_skipped_with_warning(corrupt_jobs):
    job,bad,out = corrupt_jobs['warn']
    r = job.result()
    assert r.rc==0, f"one corrupt image should not stop training: {r!r}"
    assert bad.name in r.err, f"the warning does not name {bad.name}: {r!r}"
    lines = [l for l in r.err_lines if bad.name in l]
    assert len(lines)==1 and lines[0].startswith('warning: skipping 1 unreadable image(s)'), f"not one clean warning line: {r!r}"
    assert 'UserWarning' not in r.err and '.py:' not in r.err, f"the warning shows Python's file and line: {r!r}"
    assert 'Traceback' not in r.out+r.err
    m = json.loads((out/'metrics.json').read_text())
    assert m['train_images'] == 100, "the corrupt image should be left out (100 good training images + 1 corrupt)"

def test_corrupt_image_strict(corrupt_jobs):
    job,bad,out = corrupt_jobs['strict']
    assert_one_line_error(job.result(), bad.name, '--strict')
    assert not (out/'metrics.json').exists()

# ------------------------------------------------------------------------------------------- D: never lose a run
@pytest.fixture
def run_copy(trained_run, tmp_path):
    "A copy of the shared finished run, to be refused or overwritten"
    _,run = trained_run
    dst = tmp_path/'finished'
    shutil.copytree(run, dst)
    return dst

def test_refuses_to_overwrite_finished_run(cli, fake_data, run_copy):
    before = file_hashes(run_copy)
    r = cli.run('cifar_train', *train_args(fake_data, run_copy, 1))
    assert_one_line_error(r, '--force', '--out')
    assert file_hashes(run_copy) == before, "the finished run was modified"

@pytest.fixture(scope='module')
def forced(cli, fake_data, trained_run, tmp_path_factory):
    "A copy of the shared run, with the LR finder's plot of a run that used it, overwritten with --force by a 1-epoch run with --lr"
    _,run = trained_run
    dst = tmp_path_factory.mktemp('forced')/'finished'
    shutil.copytree(run, dst) # keeps the modification times
    shutil.copy2(run/'curves.png', dst/'lr_find.png') # a file the new run, with --lr, does not write
    old = json.loads((dst/'metrics.json').read_text())
    t0 = time.time()
    r = cli.run('cifar_train', *train_args(fake_data, dst, 1, '--force'))
    return r,dst,old,t0

def test_force_overwrites(forced):
    r,run,old,t0 = forced
    r.ok()
    assert old['epochs']==TRAINED_EPOCHS
    m = json.loads((run/'metrics.json').read_text())
    assert m['epochs']==1 and m['lr']==0.01, "metrics.json was not overwritten"
    assert list(read_history(run).epoch)==[1]
    for f in ('model.pkl', 'model.safetensors', 'curves.png', 'confusion_matrix.png', 'top_losses.png'):
        assert (run/f).stat().st_mtime >= t0, f"{f} was not rewritten"

def test_force_leaves_no_file_of_the_old_run(forced):
    "After --force the folder holds only the new run: no file of the old one (here lr_find.png: the new run has --lr)"
    r,run,_,t0 = forced
    r.ok()
    stale = sorted(p.name for p in run.iterdir() if p.stat().st_mtime < t0)
    assert not stale, f"--force left files of the old run in {run}: {stale}"

def test_stop_after_leaves_checkpoint(repeat_jobs):
    s = repeat_jobs['resumed0'].result()
    stop = s['stop']
    assert stop.rc==0, stop
    assert '--resume' in stop.out, f"it does not say how to continue: {stop!r}"
    assert 'checkpoint.pth' in s['files'] and 'metrics.json' not in s['files'], s['files']
    assert s['ckpt_epoch']==1 and list(s['history'].epoch)==[1]

def test_resume_refuses_changed_setting(repeat_jobs):
    "`--resume` with settings other than the run's is refused in one line, even where one is the default (the resume after it still ends as the uninterrupted run)"
    assert_one_line_error(repeat_jobs['resumed0'].result()['refused'], "epochs 40 (the run's is 3)", "wd 0.1 (the run's is 0.05)", '--out')

HIST_COLS = ['train_loss', 'train_accuracy', 'test_loss', 'test_accuracy']

def _compare_resumed(s, full, num_workers):
    stop,resume = s['stop'],s['resume']
    assert stop.rc==0, stop
    assert resume is not None and resume.rc==0, resume
    run = s['out']
    assert (run/'metrics.json').is_file() and not (run/'checkpoint.pth').exists()
    m = json.loads((run/'metrics.json').read_text())
    assert m['command'].split()[0]=='cifar_train' and '--stop_after 1' in m['command'], m['command'] # as typed
    assert m['resumed_with']==[f"cifar_train --resume {run} --num_workers {num_workers}"], m['resumed_with']
    full_run = Path(full.args[full.args.index('--out')+1])
    h,hf = read_history(run),read_history(full_run)
    assert list(h.epoch)==list(hf.epoch)==[1, 2, 3]
    assert list(h.lr)==pytest.approx(list(hf.lr), rel=1e-6), "the resumed run does not follow the same LR schedule"
    last,lastf = h[HIST_COLS].iloc[-1].to_dict(),hf[HIST_COLS].iloc[-1].to_dict()
    assert last==pytest.approx(lastf, abs=1e-4), (
        f"num_workers={num_workers}: stopped+resumed run ends differently from the uninterrupted one\n"
        f"resumed:       {last}\nuninterrupted: {lastf}\nfull histories:\n{h}\n{hf}")

def test_resume_matches_uninterrupted(repeat_jobs):
    full = repeat_jobs['full0'].result().ok()
    _compare_resumed(repeat_jobs['resumed0'].result(), full, 0)

def test_resume_matches_uninterrupted_workers(repeat_jobs):
    "The same with --num_workers 2, --whiten, --bn_bias_lr_mult 4 and --mixup 0.4 (compared with an uninterrupted run that also uses them): the resume, without the last three, keeps the run's whitened start, biases' rate and mixup"
    full = repeat_jobs['full2'].result().ok()
    s = repeat_jobs['resumed2'].result()
    _compare_resumed(s, full, 2)
    m = json.loads((s['out']/'metrics.json').read_text())
    assert (m['whiten'],m['bn_bias_lr_mult'],m['mixup']) == (True,4,0.4)

GPU_CHECKPOINT = Path(__file__).parent/'fixtures'/'gpu-checkpoint'

def test_resume_gpu_checkpoint_on_cpu(cli, fake_data, session_dir):
    "A run stopped on a GPU (its checkpoint holds CUDA tensors) is finished with --resume on a machine without one"
    import torch
    saved_on = set()
    torch.load(GPU_CHECKPOINT/'checkpoint.pth', map_location=lambda s,loc: saved_on.add(loc) or s, weights_only=False)
    assert 'cuda:0' in saved_on, f"the fixture should hold CUDA tensors, it was saved on {saved_on}"
    run = session_dir/'from-gpu'
    shutil.copytree(GPU_CHECKPOINT, run)
    cfg = json.loads((run/'run.json').read_text())
    cfg.update(data=str(fake_data), subset=None, bs=32) # it was made from a 1% subset of the real data
    (run/'run.json').write_text(json.dumps(cfg))
    r = cli.run('cifar_train', '--resume', run, '--num_workers', '0').ok()
    assert r.out_lines[0].startswith('Epoch 2:'), r
    h = read_history(run)
    assert list(h.epoch)==[1, 2] and h.test_accuracy[0]==pytest.approx(0.1)
    m = json.loads((run/'metrics.json').read_text())
    assert m['epochs']==2
    assert re.fullmatch(r"device not recorded \(epoch 1\), CPU: .+ \(epoch 2\)", m['device']), m['device'] # the fixture predates the device column (its epoch 1 ran on an H100)

def _signal_after_first_checkpoint(p, run, sig, wait=120) -> tuple:
    "Send `sig` to `p` (started in a session of its own) once `run/checkpoint.pth` exists; `p`'s `(stdout, stderr)` once it and any processes holding its pipes have ended (after `wait` s they are killed)"
    try:
        deadline = time.time() + TIMEOUT
        while not (run/'checkpoint.pth').exists():
            if p.poll() is not None: pytest.fail(f"the run ended before its first checkpoint: {p.communicate()}")
            if time.time() > deadline: pytest.fail(f"no checkpoint.pth after {TIMEOUT}s")
            time.sleep(0.2)
        p.send_signal(sig)
        return p.communicate(timeout=wait)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.communicate(timeout=30)

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['ctrl_c', 'kill'])
def test_interrupt_keeps_checkpoint_and_resumes(cli, session_dir, sig):
    "Ctrl-C (SIGINT) or `kill` (SIGTERM) after the first checkpoint: exit 130, a message saying how to continue, and --resume works"
    if sig==signal.SIGINT and signal.getsignal(sig)==signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (the tests run under nohup or as a background job), so the runs they start ignore it too")
    import torch
    from cifar_fastai.data import make_fake_cifar
    d = make_fake_cifar(session_dir/f'bigger-{sig.name}', n_train=60, n_test=10)
    run = session_dir/f'interrupted-{sig.name}'
    cmd = [tool_path('cifar_train'), *map(str, train_args(d, run, 40))]
    p = subprocess.Popen(cmd, env=cli.env, cwd=cli.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    out,err = _signal_after_first_checkpoint(p, run, sig)
    assert p.returncode==130, f"exit status {p.returncode} after {sig.name}\n{out}\n{err}"
    assert '--resume' in err, f"the message does not say how to continue:\n{err}"
    assert 'Traceback' not in out+err, err
    state = torch.load(run/'checkpoint.pth', weights_only=False)
    done = state['epoch']
    assert done >= 1 and len(state['history'])==done
    assert not (run/'metrics.json').exists()
    # continue it for one more epoch
    r = cli.run('cifar_train', '--resume', run, '--num_workers', '0', '--stop_after', done+1).ok()
    assert f'stopped after epoch {done+1}' in r.out, r
    state = torch.load(run/'checkpoint.pth', weights_only=False)
    assert state['epoch']==done+1
    assert list(read_history(run).epoch)==list(range(1, done+2))
    assert [l for l in r.out_lines if l.startswith('Epoch')][0].startswith(f'Epoch {done+1}:'), r

DRIVER_RUN = """import importlib.util, sys
spec = importlib.util.spec_from_file_location('driver', {driver!r})
driver = importlib.util.module_from_spec(spec); spec.loader.exec_module(driver)
driver.STUDIES['tiny'] = dict(long=dict(arch='tiny', epochs=40, bs=32), screen=dict(arch='tiny', epochs=1, bs=32, valid_pct=0.5))
driver.main('tiny', sys.argv[1], num_workers=2)
"""

def _driver_run(cli, session_dir, variant) -> tuple:
    "Start the experiment driver on `variant` of a study of `tiny` runs on generated data: `(process, its folder, the run folder)`"
    from cifar_fastai.data import make_fake_cifar
    work = session_dir/f'driver-{variant}'
    make_fake_cifar(work/'data', n_train=60, n_test=10)
    (work/'run_tiny.py').write_text(DRIVER_RUN.format(driver=str(REPO/'experiments'/'run.py')))
    p = subprocess.Popen([sys.executable, 'run_tiny.py', variant], env={**cli.env, 'CIFAR10_DATA': str(work/'data')}, cwd=work,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return p,work,work/'results'/'tiny'/f'{variant}-s0'

def test_driver_kill_keeps_checkpoint(cli, session_dir):
    "`kill` (SIGTERM) stops an experiment-driver run after its first checkpoint, saying how to continue; the pipes close only once its loader workers are gone too"
    p,work,run = _driver_run(cli, session_dir, 'long')
    out,err = _signal_after_first_checkpoint(p, run, signal.SIGTERM)
    assert p.returncode==1, f"exit status {p.returncode} after SIGTERM\n{out}\n{err}"
    assert err.strip().splitlines()[-1]==f"{run.relative_to(work)}: interrupted; continue with the same command: python run_tiny.py long", err
    assert (run/'checkpoint.pth').exists() and not (run/'metrics.json').exists()

def test_driver_screen_leaves_test_images_alone(cli, session_dir):
    "A driver run scored on held-out training images (`valid_pct`) is not tested on the test images afterwards"
    p,work,run = _driver_run(cli, session_dir, 'screen')
    out,err = p.communicate(timeout=TIMEOUT)
    assert p.returncode==0, f"{out}\n{err}"
    m = json.loads((run/'metrics.json').read_text())
    assert (m['valid_pct'],m['valid_images']) == (0.5,300) and 'test_accuracy' not in m, m
    assert not list(run.glob('eval*.json')), sorted(o.name for o in run.iterdir())

def test_nan_stops_with_one_line_message(nan_job):
    job,run = nan_job
    line = assert_one_line_error(job.result(), 'became', '--lr')
    assert not (run/'metrics.json').exists()

def test_nan_keeps_last_good_checkpoint(nan_job):
    "The checkpoint left behind is the last epoch before the divergence, and holds only finite numbers"
    import torch
    job,run = nan_job
    r = job.result()
    assert r.rc not in (0, None), f"training did not stop: {r!r}"
    mo = re.search(r'(?:loss|model.s \S+) became .*? at epoch (\d+)', r.err)
    assert mo, f"no '(loss|model's X) became ... at epoch N' message: {r!r}"
    bad_epoch = int(mo.group(1))
    assert bad_epoch >= 2, f"diverged in the first epoch: nothing to keep, pick a milder setting: {r!r}"
    state = torch.load(run/'checkpoint.pth', weights_only=False)
    assert state['epoch']==bad_epoch-1==len(state['history'])
    losses = [(h['epoch'], h['train_loss'], h['test_loss']) for h in state['history']]
    assert all(math.isfinite(a) and math.isfinite(b) for _,a,b in losses), (
        f"the kept checkpoint's history has non-finite losses (epoch, train, test): {losses}")
    # the weights (BatchNorm's running statistics may have overflowed already: the losses above stayed finite)
    bad = [k for k,v in state['model'].items() if v.is_floating_point() and 'running_' not in k and not torch.isfinite(v).all()]
    assert not bad, f"the kept checkpoint (epoch {state['epoch']}) holds non-finite weights: {bad}"
