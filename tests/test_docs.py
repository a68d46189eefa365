"Tests for the docs: `tools/build_docs`'s pages, their links, API docs and images, and how a browser renders them; the links of the notebooks and the README"
import configparser, json, os, re, shutil, subprocess, sys, tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit
import pytest
from PIL import Image, ImageStat

root = Path(__file__).resolve().parent.parent
build_docs = root/'tools'/'build_docs'
# `build_docs` runs on `python3` from the PATH: make that this environment's
env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}'}
api = {'data.html': 'cifar_dls', 'augment.html': 'AlbumentationsTransform', 'model.html': 'receptive_field',
       'learner.html': 'cifar_learner', 'inference.html': 'load_model', 'report.html': 'runs_table', 'train.html': 'train'}

def notebooks(path=root/'nbs'):
    "The notebooks nbdev renders under `path`, index first"
    return sorted((o for o in path.glob('*.ipynb') if o.name[0] not in '_.'), key=lambda o: (o.stem!='index', o.name))

def page_name(nb):
    "The page Quarto writes for notebook `nb`: its name without the number prefix"
    return re.sub(r'^\d+_', '', nb.stem) + '.html'

def run_build(dest, build=build_docs):
    "Run `build` into `dest`, failing with its output if it fails; returns its stdout"
    res = subprocess.run([str(build), str(dest)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode==0, f'build_docs failed:\n{res.stdout}\n{res.stderr[-5000:]}'
    return res.stdout

class Page(HTMLParser):
    "The `href`s, `id`s, `(id, text)` of headings and `img` sources in HTML `text`"
    def __init__(self, text):
        super().__init__()
        self.hrefs,self.ids,self.heads,self.imgs,self._head = [],set(),[],[],None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag=='a' and a.get('href'): self.hrefs.append(a['href'])
        if tag=='img': self.imgs.append(a.get('src') or '')
        if re.fullmatch(r'h[1-6]', tag): self._head = [a.get('id'), '']

    def handle_data(self, data):
        if self._head: self._head[1] += data

    def handle_endtag(self, tag):
        if not (re.fullmatch(r'h[1-6]', tag) and self._head): return
        self.heads.append((self._head[0], self._head[1].strip()))
        self._head = None

def read_pages(path):
    "A `Page` for every HTML file in `path`, by name"
    return {o.name: Page(o.read_text(encoding='utf-8')) for o in path.glob('*.html')}

def broken_links(path):
    "`(page, href)` for each relative link in `path`'s pages to a missing file, or to an id its target lacks"
    pages,res = read_pages(path),[]
    for nm,page in pages.items():
        for href in page.hrefs:
            url = urlsplit(href)
            if url.scheme or url.netloc: continue
            tgt = url.path or nm
            if not (path/tgt).is_file() or (url.fragment and tgt in pages and url.fragment not in pages[tgt].ids):
                res.append((nm, href))
    return res

def doc_url():
    "The absolute URL nbdev's doc links start with, from settings.ini"
    cfg = configparser.ConfigParser()
    cfg.read(root/'settings.ini')
    return urljoin(cfg['DEFAULT']['doc_host']+'/', cfg['DEFAULT']['doc_baseurl'])+'/'

def shown_pngs(nb):
    "Number of PNG outputs in the cells of notebook `nb` that the docs show"
    hidden = re.compile(r'^\s*#\|\s*(hide\b|include:\s*false|output:\s*false)', re.MULTILINE)
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    return sum('image/png' in o.get('data', {}) for c in cells if c['cell_type']=='code' and not hidden.search(''.join(c['source']))
               for o in c.get('outputs', []))

@pytest.fixture(scope='module')
def docs(tmp_path_factory):
    "The docs built into a temporary folder, and what `build_docs` printed"
    dest = tmp_path_factory.mktemp('docs')
    return dest,run_build(dest)

def test_pages(docs):
    dest,out = docs
    assert page_name(notebooks()[0])=='index.html'
    for nb in notebooks():
        assert (dest/page_name(nb)).is_file(), f'no page for {nb.name}'
        assert str(dest/page_name(nb)) in out, f'{page_name(nb)} not printed'

def test_link_checker(tmp_path):
    (tmp_path/'a.html').write_text('<h2 id="x">X</h2><a href="b.html#y">ok</a><a href="b.html#nope">bad id</a>'
                                   '<a href="c.html">missing</a><a href="#x">ok</a><a href="https://e.com/c.html">external</a>')
    (tmp_path/'b.html').write_text('<h3 id="y">Y</h3><a href="a.html">ok</a>')
    assert broken_links(tmp_path)==[('a.html', 'b.html#nope'), ('a.html', 'c.html')]

def test_links(docs):
    dest,_ = docs
    assert broken_links(dest)==[]
    names = [page_name(o) for o in notebooks()]
    for nm,page in read_pages(dest).items():
        assert set(names) <= set(page.hrefs), f'{nm} does not link every page'
        assert not [o for o in page.hrefs if o.startswith(doc_url())], f'{nm} links to the doc host'
    index = Page((dest/'index.html').read_text(encoding='utf-8'))
    assert all(index.hrefs.count(o)>=2 for o in names[1:]), 'index.html lacks the list of modules'

def md_links(text):
    "The relative targets of the links and images in markdown `text`"
    return [o for o in re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text) if not re.match(r'^([a-z]+:|#|/)', o, re.I)]

def notebook_markdown(nb):
    "The markdown of notebook `nb`: its markdown cells and the markdown outputs of its code cells"
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    return [''.join(c['source']) for c in cells if c['cell_type']=='markdown'] + [
        ''.join(o['data']['text/markdown']) for c in cells for o in c.get('outputs', []) if 'text/markdown' in o.get('data', {})]

@pytest.mark.parametrize('nb', notebooks(), ids=lambda o: o.name)
def test_notebook_links(nb):
    "A notebook's links reach a file of the repository from the notebook's folder, as Jupyter and GitHub follow them"
    missing = [o for md in notebook_markdown(nb) for o in md_links(md) if not (nb.parent/o.split('#')[0]).exists()]
    assert not missing, f'{nb.name} links to missing files: {missing[:5]} (write links from nbs/, e.g. ../results/RUN)'

def test_readme_links():
    missing = [o for o in md_links((root/'README.md').read_text(encoding='utf-8')) if not (root/o.split('#')[0]).exists()]
    assert not missing, f'README.md links to missing files: {missing[:5]}'

@pytest.mark.parametrize('page,name', api.items())
def test_api(docs, page, name):
    dest,_ = docs
    assert (name.lower(), name) in Page((dest/page).read_text(encoding='utf-8')).heads, f'no show_doc of {name} in {page}'

def test_images(docs):
    dest,_ = docs
    for nb in notebooks():
        if shown_pngs(nb):
            imgs = Page((dest/page_name(nb)).read_text(encoding='utf-8')).imgs
            assert any(o.startswith('data:image/png;base64,') for o in imgs), f'{page_name(nb)} lacks its images'

def test_images_embedded(tmp_path):
    "A PNG output of a notebook becomes an embedded image, whatever the project's notebooks hold now"
    proj = tmp_path/'proj'
    (proj/'tools').mkdir(parents=True)
    shutil.copy(build_docs, proj/'tools')
    shutil.copy(root/'settings.ini', proj)
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC'
    md = lambda s: dict(cell_type='markdown', metadata={}, source=s)
    code = dict(cell_type='code', metadata={}, execution_count=1, source='plot()',
                outputs=[dict(output_type='display_data', metadata={}, data={'image/png': png, 'text/plain': '<Figure>'})])
    for nm,cells in ('index', [md('# Home\n> Tiny')]), ('00_pics', [md('# Pics'), code]):
        nb = dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)
        (proj/'nbs').mkdir(exist_ok=True)
        (proj/'nbs'/f'{nm}.ipynb').write_text(json.dumps(nb))
    run_build(tmp_path/'out', proj/'tools'/'build_docs')
    assert shown_pngs(proj/'nbs'/'00_pics.ipynb')==1
    assert f'data:image/png;base64,{png}' in Page((tmp_path/'out'/'pics.html').read_text()).imgs

chromium = shutil.which('chromium') or shutil.which('chromium-browser')

@pytest.mark.skipif(not chromium, reason='chromium is not installed')
@pytest.mark.parametrize('page', ['index.html', page_name(notebooks()[1])])
def test_screenshot(docs, tmp_path, page):
    dest,_ = docs
    png = tmp_path/f'{page}.png'
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={profile}', '--window-size=1200,900', f'--screenshot={png}',
                        (dest/page).as_uri()], capture_output=True, timeout=120, check=True)
    im = Image.open(png).convert('RGB')
    assert im.size==(1200, 900)
    assert len(im.getcolors(1200*900))>=20, 'screenshot is (nearly) one colour'
    assert ImageStat.Stat(im.convert('L')).stddev[0]>10, 'screenshot is (nearly) blank'
