"""Getting the data: the download path through fastai's `untar_data` (E) and the real CIFAR-10 archive (F)"""
import functools, http.server, inspect, os, re, socket, threading
from contextlib import contextmanager
from pathlib import Path
import pytest
from conftest import make_tgz

REAL_TGZ = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'cifar10_jpeg.tgz'

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@contextmanager
def serve(folder):
    "Serve `folder` over HTTP on 127.0.0.1 from a thread; yields the base URL"
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(folder)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}'
    finally:
        srv.shutdown(); srv.server_close(); t.join(5)

def test_download_extracts_with_untar_data(tmp_path, monkeypatch):
    from cifar_fastai.data import get_cifar10, make_fake_cifar, CIFAR_CLASSES
    src = make_fake_cifar(tmp_path/'src'/'cifar10', n_train=2, n_test=1)
    (tmp_path/'www').mkdir()
    make_tgz(tmp_path/'www'/'cifar10.tgz', src, 'cifar10')
    home = Path(os.environ['FASTAI_HOME']) # this test's own, set by `_isolated_env`
    with serve(tmp_path/'www') as base:
        path = get_cifar10(url=f'{base}/cifar10.tgz')
    assert Path(path).resolve() == (home/'data'/'cifar10').resolve(), f"not extracted by untar_data into FASTAI_HOME: {path}"
    assert (home/'archive'/'cifar10.tgz').is_file(), "the downloaded archive is not in FASTAI_HOME/archive"
    assert sorted(o.name for o in (path/'train').iterdir()) == list(CIFAR_CLASSES)
    assert len(list((path/'test'/'cat').iterdir())) == 1
    # a second call finds it without downloading (the server is gone)
    assert Path(get_cifar10(url=f'{base}/cifar10.tgz')).resolve() == Path(path).resolve()

def test_download_failure_is_one_line(tmp_path):
    from cifar_fastai.data import DataError, get_cifar10
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close() # nothing listens there now
    with pytest.raises(DataError) as e: get_cifar10(url=f'http://127.0.0.1:{port}/nothing-here/cifar10.tgz')
    msg = str(e.value)
    assert '\n' not in msg, f"not one line: {msg!r}"
    assert 'CIFAR10_DATA' in msg and '--data' in msg, msg

def test_real_download_is_checksummed():
    "fastai's table of sizes and MD5s (which `untar_data` checks downloads against) knows `URLs.CIFAR`"
    import fastai.data
    from fastai.data.external import URLs
    from fastdownload import checks_module, read_checks
    from cifar_fastai.data import get_cifar10
    assert inspect.signature(get_cifar10).parameters['url'].default == URLs.CIFAR
    # fastai/data/download_checks.py is one dict literal (no `checks` name): read it the way fastdownload does
    checks = read_checks(checks_module(fastai.data))
    assert URLs.CIFAR in checks, f"{URLs.CIFAR} has no entry in {checks_module(fastai.data)}"
    size,md5 = checks[URLs.CIFAR]
    assert size > 100_000_000 and re.fullmatch(r'[0-9a-f]{32}', md5)

@pytest.mark.skipif(not REAL_TGZ.is_file(), reason=f"{REAL_TGZ} is absent")
def test_real_cifar10(monkeypatch):
    "The real archive: 50,000 + 10,000 images, the 10 classes in CIFAR order, the published mean (default cache, reused)"
    monkeypatch.delenv('CIFAR_FASTAI_CACHE', raising=False) # the real cache: the 60k-file extraction is kept between runs
    from fastai.vision.all import get_image_files
    from cifar_fastai.data import CIFAR_CLASSES, CIFAR_STATS, dataset_stats, get_cifar10
    path = get_cifar10(REAL_TGZ)
    for split,n in (('train', 50_000), ('test', 10_000)):
        fns = get_image_files(path/split)
        assert len(fns)==n, f"{split}: {len(fns)} images"
        assert sorted({f.parent.name for f in fns}) == list(CIFAR_CLASSES)
    assert sorted(o.name for o in (path/'train').iterdir() if o.is_dir()) == list(CIFAR_CLASSES)
    if (path/'labels.txt').exists(): assert (path/'labels.txt').read_text().split() == list(CIFAR_CLASSES)
    mean,std = dataset_stats(path)
    assert mean == pytest.approx(CIFAR_STATS[0], abs=0.02), mean
    assert std == pytest.approx(CIFAR_STATS[1], abs=0.02), std
