"""Tiny datasets and checkpoints for the transfer tests.

- :func:`make_coco`: COCO-format images with boxes and polygon masks (and
  optionally COCO-stuff-style semantic maps for HTC's semantic branch);
- :func:`make_ade20k`: ADE20K layout (``images/{training,validation}/*.jpg``,
  ``annotations/{training,validation}/*.png``, 0 = "other");
- :func:`pretrain`: a short pre-training run through the Runner with the real
  UM-MAE / GreenMIM config shrunk to a tiny encoder; returns its checkpoint;
- :func:`shrink_pipeline`, :func:`cpu_norms`, :func:`run_cfg`: turn a
  full-size config into a few CPU iterations.

Results are cached per process, so several test modules share one run.
"""
import copy
import json
import os
import os.path as osp

import cv2
import numpy as np

from _tiny_runs import ROOT, drop_new_default_scopes, make_imagenet_folder

SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT_TINY = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 2, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
# Twins-SVT with 4x4 windows: 128-px GreenMIM pre-training, any detector size
TWINS_TINY = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 2, 4], patch_sizes=[4, 2, 2, 2],
                  strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                  sr_ratios=[8, 4, 2, 1], window_sizes=[4, 4, 4, 4])
CLASSES = ('person', 'car')
_CACHE = {}


# -- datasets ----------------------------------------------------------------
def _shapes(rng, size, n):
    """``n`` random rectangles / ellipses: (polygon (k, 2), label)."""
    out = []
    for _ in range(n):
        w, h = rng.integers(size // 4, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        if rng.random() < 0.5:
            poly = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        else:
            t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            poly = np.stack([x + w / 2 + w / 2 * np.cos(t),
                             y + h / 2 + h / 2 * np.sin(t)], 1)
        out.append((poly.astype(np.float32), int(rng.integers(2))))
    return out


def make_coco(root, num_images=4, size=128, stuff=False, seed=0):
    """``root/{train2017,val2017}/*.jpg`` and
    ``root/annotations/instances_{train,val}2017.json`` (the same images in
    both splits), objects of the classes ``CLASSES``; with ``stuff``, also
    ``root/stuffthingmaps/{train,val}2017/*.png`` label maps (0..182, 255
    ignored). Returns ``root``."""
    rng = np.random.default_rng(seed)
    categories = [dict(id=i + 1, name=c) for i, c in enumerate(CLASSES)]
    images, annotations = [], []
    for split in ('train2017', 'val2017'):
        os.makedirs(osp.join(root, split), exist_ok=True)
        if stuff:
            os.makedirs(osp.join(root, 'stuffthingmaps', split),
                        exist_ok=True)
    for i in range(num_images):
        img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        seg = np.full((size, size), 182, np.uint8)  # background stuff class
        for poly, label in _shapes(rng, size, 2):
            color = (200, 60, 60) if label == 0 else (60, 60, 200)
            cv2.fillPoly(img, [poly.round().astype(np.int32)], color)
            cv2.fillPoly(seg, [poly.round().astype(np.int32)], label)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1,
                category_id=label + 1, iscrowd=0,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(cv2.contourArea(poly)),
                segmentation=[poly.flatten().tolist()]))
        name = f'{i:06d}.jpg'
        images.append(dict(id=i + 1, file_name=name, width=size,
                           height=size))
        for split in ('train2017', 'val2017'):
            cv2.imwrite(osp.join(root, split, name), img)
            if stuff:
                cv2.imwrite(osp.join(root, 'stuffthingmaps', split,
                                     name.replace('.jpg', '.png')), seg)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split in ('train2017', 'val2017'):
        with open(osp.join(root, 'annotations',
                           f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
    return root


def make_ade20k(root, num_images=4, size=128, seed=0):
    """ADE20K layout with label maps of 0 ("other", ignored after
    ``reduce_zero_label``) and classes 1..3 as random shapes."""
    rng = np.random.default_rng(seed)
    for split in ('training', 'validation'):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
    for i in range(num_images):
        img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        seg = np.ones((size, size), np.uint8)  # class 1 everywhere
        seg[:, :size // 8] = 0
        for poly, label in _shapes(rng, size, 3):
            pts = [poly.round().astype(np.int32)]
            cv2.fillPoly(img, pts, (200, 60, 60) if label else (60, 200, 60))
            cv2.fillPoly(seg, pts, label + 2)
        for split in ('training', 'validation'):
            cv2.imwrite(osp.join(root, 'images', split, f'{i}.jpg'), img)
            cv2.imwrite(osp.join(root, 'annotations', split, f'{i}.png'),
                        seg)
    return root


# -- config surgery ----------------------------------------------------------
def _walk(obj, fn):
    if isinstance(obj, dict):
        fn(obj)
        for v in obj.values():
            _walk(v, fn)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, fn)


def cpu_norms(cfg, to='BN'):
    """Replace every ``SyncBN`` in ``cfg`` (issue item 5)."""
    def fn(d):
        if d.get('type') == 'SyncBN':
            d['type'] = to
    _walk(getattr(cfg, '_cfg_dict', cfg), fn)
    return cfg


def shrink_pipeline(pipeline, size):
    """Scale the ``scale`` / ``scales`` / ``crop_size`` of every transform so
    that the largest short side becomes ``size``."""
    keys = ('scale', 'scales', 'crop_size')

    def pairs(v):
        if isinstance(v, int):
            return [(v, v)]
        if isinstance(v, tuple) and all(isinstance(x, int) for x in v):
            return [v]
        if isinstance(v, list):
            return [p for p in v if isinstance(p, (tuple, list))]
        return []

    def resize(v, f):
        if isinstance(v, int):
            return max(1, round(v * f))
        if isinstance(v, tuple):
            return tuple(max(1, round(x * f)) for x in v)
        return [resize(tuple(p), f) for p in v]

    def fn(d):
        sides = [min(p) for k in keys for p in pairs(d.get(k))]
        if sides:
            f = size / max(sides)
            for k in keys:
                if pairs(d.get(k)):
                    d[k] = resize(d[k], f)
    for t in pipeline:
        _walk(t, fn)
    return pipeline


def set_loader(loader, data_root, batch_size=2, **dataset):
    loader.update(batch_size=batch_size, num_workers=0,
                  persistent_workers=False)
    ds = loader.dataset
    while 'pipeline' not in ds:  # dataset wrappers
        ds = ds.dataset
    ds.update(data_root=data_root, **dataset)
    return ds


def run_cfg(cfg, work_dir, iters=2, test=True):
    """Train ``iters`` iterations with the Runner (no validation loop), then,
    with ``test``, evaluate on the test set; returns (runner, metrics or
    None)."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from mmum.utils.dist import cpu_fallback_amp
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg.pop(key, None)
    if not test:
        for key in ('test_dataloader', 'test_cfg', 'test_evaluator'):
            cfg.pop(key, None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        by_epoch=False, interval=iters)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'),
                       mp_cfg=dict(mp_start_method='fork',
                                   opencv_num_threads=0))
    cfg.resume = False
    cfg.load_from = None
    cfg.randomness = dict(seed=0)
    if 'visualizer' in cfg:  # visualizers are global instances by name
        cfg.visualizer.name = f'vis_{osp.basename(str(work_dir))}'
    cpu_fallback_amp(cfg)
    before = set(DefaultScope._instance_dict)
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
        metrics = runner.test() if test else None
    finally:
        drop_new_default_scopes(before)
    return runner, metrics


# -- short pre-training runs -------------------------------------------------
def pretrain(kind, root):
    """A 2-iteration pre-training run through the Runner with the real config
    of ``kind`` ('um_mae_swin', 'um_mae_pvt', 'green_mim_swin' or
    'green_mim_twins') shrunk to a
    tiny encoder; returns the path of the checkpoint it wrote (the whole
    algorithm: ``backbone.``, ``neck.``, ``head.``)."""
    if kind in _CACHE:
        return _CACHE[kind]
    from mmengine.config import Config
    path = dict(um_mae_swin='configs/um_mae/swin_t_200e.py',
                um_mae_pvt='configs/um_mae/pvt_s_200e.py',
                green_mim_swin='configs/green_mim/swin_b_800e.py',
                green_mim_twins='configs/green_mim/twins_l_800e.py')[kind]
    cfg = Config.fromfile(osp.join(ROOT, path))
    data = osp.join(str(root), 'imagenet')
    if not osp.isdir(data):
        make_imagenet_folder(data, num=4, size=256)
    if kind == 'um_mae_swin':
        cfg.model.backbone.arch = SWIN_TINY
        cfg.model.neck.update(embed_dim=256, decoder_embed_dim=64,
                              decoder_num_heads=4)
    elif kind == 'um_mae_pvt':
        cfg.model.backbone.arch = PVT_TINY
        cfg.model.neck.update(embed_dim=64, decoder_embed_dim=64,
                              decoder_num_heads=4)
    else:  # GreenMIM at 128 px: 4x4 mask units of 32 px, 4x4 windows
        if kind == 'green_mim_twins':
            cfg.model.backbone.arch = TWINS_TINY
        else:
            cfg.model.backbone.update(arch=SWIN_TINY, img_size=128,
                                      window_size=4)
        cfg.model.neck.update(num_patches=16, embed_dim=256 if kind ==
                              'green_mim_swin' else 128,
                              decoder_embed_dim=64, decoder_num_heads=4)
        shrink_pipeline(cfg.train_dataloader.dataset.pipeline, 128)
    set_loader(cfg.train_dataloader, data)
    cfg.optim_wrapper.pop('accumulative_counts', None)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0,
                                by_epoch=False)]
    cfg.pop('auto_scale_lr', None)
    work_dir = osp.join(str(root), f'pretrain_{kind}')
    run_cfg(cfg, work_dir, iters=2, test=False)
    _CACHE[kind] = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(_CACHE[kind])
    return _CACHE[kind]


def cache_root(tmp_path_factory):
    """One folder per process for the shared runs."""
    if 'root' not in _CACHE:
        _CACHE['root'] = str(tmp_path_factory.mktemp('transfer'))
    return _CACHE['root']


# -- intermediate fine-tuning ------------------------------------------------
FINETUNE_CFG = dict(swin='configs/finetune/um_mae_swin_t_100e.py',
                    pvt='configs/finetune/um_mae_pvt_s_100e.py')


def finetune_cfg(arch, checkpoint, data_root, size=128):
    """The intermediate fine-tuning config of the UM-MAE ``arch`` ('swin' or
    'pvt') on a tiny encoder, 3 classes, ``size`` px."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, FINETUNE_CFG[arch]))
    cfg.model.backbone.update(
        arch=SWIN_TINY if arch == 'swin' else PVT_TINY, img_size=size)
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg.model.head.update(num_classes=3,
                          in_channels=256 if arch == 'swin' else 64)
    cfg.data_preprocessor.num_classes = 3
    shrink_pipeline(cfg.train_dataloader.dataset.pipeline, size)
    set_loader(cfg.train_dataloader, data_root)
    cfg.optim_wrapper.pop('accumulative_counts', None)
    return cfg


def intermediate(arch, root):
    """2 iterations of intermediate fine-tuning from :func:`pretrain`;
    returns (checkpoint path, runner)."""
    key = f'intermediate_{arch}'
    if key not in _CACHE:
        ckpt = pretrain(f'um_mae_{arch}', root)
        cfg = finetune_cfg(arch, ckpt, osp.join(str(root), 'imagenet'))
        work_dir = osp.join(str(root), key)
        runner, _ = run_cfg(cfg, work_dir, iters=2, test=False)
        _CACHE[key] = (osp.join(work_dir, 'iter_2.pth'), runner)
    return _CACHE[key]


def assert_backbone_from(runner, ckpt, atol=1e-3):
    """The runner's backbone starts from ``ckpt`` (its `backbone.` keys):
    every shared tensor is still within ``atol`` after the few warm-up
    iterations (a random init would be far off)."""
    import torch
    src = torch.load(ckpt, map_location='cpu',
                     weights_only=False)['state_dict']
    model = runner.model.module if hasattr(runner.model, 'module') \
        else runner.model
    ours = model.backbone.state_dict()
    # (tensors whose shape changes with the window size are resized on load)
    shared = [k for k in ours if f'backbone.{k}' in src
              and src[f'backbone.{k}'].shape == ours[k].shape]
    assert len(shared) > 0.8 * len(ours), (len(shared), len(ours))
    for k in shared:
        assert torch.allclose(ours[k].float(), src[f'backbone.{k}'].float(),
                              atol=atol), k
