"Exploratory: mirror vs mirror+translate TTA on existing run models (1 thread, beside a training run)"
import sys, json, torch, torch.nn.functional as F
torch.set_num_threads(1)
from pathlib import Path
from fastai.vision.all import get_image_files, parent_label, tensor
from cifar_fastai.data import get_cifar10
from cifar_fastai.train import load_model, load_images
path = get_cifar10('../shared/data/cifar10_jpeg.tgz')
fns = get_image_files(path/'test')
ims = load_images(fns).float()/255
def shift(x, dx, dy, pad=2):
    "x translated by (dx,dy) px, reflect-padded"
    xp = F.pad(x, (pad,)*4, mode='reflect')
    return xp[..., pad+dy:pad+dy+32, pad+dx:pad+dx+32]
for run in sys.argv[1:]:
    model,vocab,stats = load_model(Path(run)/'model.pkl')
    targs = tensor([vocab.index(parent_label(o)) for o in fns])
    mean,std = (tensor(o).view(1,3,1,1) for o in stats)
    x = (ims-mean)/std
    views = {'plain':x, 'flip':x.flip(-1)}
    for d in (1,2):
        for dx,dy in ((d,0),(-d,0),(0,d),(0,-d)): views[f's{d}{dx:+d}{dy:+d}'] = shift(x,dx,dy)
    P = {}
    with torch.no_grad():
        for k,v in views.items(): P[k] = torch.cat([model(c).float().softmax(-1) for c in v.split(500)])
        for k in list(P):
            if k.startswith('s'): P[k+'f'] = torch.cat([model(c.flip(-1)).float().softmax(-1) for c in views[k].split(500)])
    acc = lambda ks: (sum(P[k] for k in ks).argmax(-1)==targs).float().mean().item()
    s1 = [k for k in P if k.startswith('s1')]; s2 = [k for k in P if k.startswith('s2')]
    r = dict(plain=acc(['plain']), mirror=acc(['plain','flip']), mirror_shift1=acc(['plain','flip']+s1), mirror_shift2=acc(['plain','flip']+s2),
             mirror_shift12=acc(['plain','flip']+s1+s2))
    print(run, {k:f'{100*v:.2f}' for k,v in r.items()}, flush=True)
