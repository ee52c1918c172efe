"""Worker of tests/test_users_training.py, started with 2 processes by
``torch.distributed.run``: every downstream config (configs/mmdet,
configs/mmseg, configs/finetune) shrunk to a tiny model (random weights, no
checkpoint) trains 2 iterations under gloo DDP without
``find_unused_parameters``, as ``tools/dist_train.sh CONFIG 2`` would run it.

    python -m torch.distributed.run --nproc_per_node 2 \\
        tests/_ddp_downstream.py OUT_DIR CASE [CASE ...]

Each rank writes ``OUT_DIR/rank<r>.json``: ``{case: 'ok' or the error}``.
A case name may end in ``@frozen<k>`` to also set ``frozen_stages=k``.
"""
import json
import os
import os.path as osp
import sys
import traceback

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from transfer_data import (ROOT, PVT_TINY, SWIN_TINY, TWINS_TINY,  # noqa
                           make_ade20k, make_coco, run_cfg, set_loader,
                           shrink_pipeline)

MMDET = {
    'gfl_swin': 'gfl_um_mae_swin_t_fpn_lsj-25e_coco.py',
    'gfl_pvt': 'gfl_um_mae_pvt_s_fpn_lsj-25e_coco.py',
    'mask_rcnn_1x': 'mask-rcnn_green_mim_swin_b_fpn_1x_coco.py',
    'mask_rcnn_3x': 'mask-rcnn_green_mim_swin_b_fpn_ms-crop-3x_coco.py',
    'mask_rcnn_twins': 'mask-rcnn_green_mim_twins_l_fpn_1x_coco.py',
    'htcpp': 'htcpp_um_mae_swin_l_fpn_ms-36e_coco.py',
    'htcpp_instaboost': 'htcpp_um_mae_swin_l_fpn_ms-instaboost-36e_coco.py',
}
MMSEG = {
    'upernet_swin': 'upernet_um_mae_swin_t_8xb2-160k_ade20k-512x512.py',
    'upernet_pvt': 'upernet_um_mae_pvt_s_8xb2-160k_ade20k-512x512.py',
}
FINETUNE = {
    'ft_um_mae_swin_t': 'um_mae_swin_t_100e.py',
    'ft_um_mae_pvt_s': 'um_mae_pvt_s_100e.py',
    'ft_um_mae_swin_l': 'um_mae_swin_l_100e.py',
    'ft_green_mim_swin_b': 'green_mim_swin_b_100e.py',
    'ft_green_mim_swin_l': 'green_mim_swin_l_100e.py',
    'ft_green_mim_twins_l': 'green_mim_twins_l_100e.py',
}
CASES = {**{k: f'configs/mmdet/{v}' for k, v in MMDET.items()},
         **{k: f'configs/mmseg/{v}' for k, v in MMSEG.items()},
         **{k: f'configs/finetune/{v}' for k, v in FINETUNE.items()}}
SIZE = 64


def tiny_backbone(backbone, size=SIZE):
    """A tiny version of a downstream backbone config, random weights."""
    kind = backbone.type.split('.')[-1]
    if kind in ('SVT', 'GreenTwins'):
        backbone.update(arch=TWINS_TINY)
    elif kind == 'PVT':
        backbone.update(arch=PVT_TINY, img_size=size)
    else:  # CPBSwinTransformer, mmpretrain's SwinTransformer
        backbone.update(arch=SWIN_TINY, img_size=size, window_size=4,
                        pad_small_map=True)
    backbone.init_cfg = None
    twins = TWINS_TINY['embed_dims']
    return dict(SVT=twins, GreenTwins=twins,
                PVT=PVT_TINY['embed_dims']).get(kind, [32, 64, 128, 256])


def _walk(obj, fn):
    if isinstance(obj, dict):
        fn(obj)
        for v in obj.values():
            _walk(v, fn)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, fn)


def _narrow(d):
    for key in ('in_channels', 'out_channels', 'feat_channels',
                'conv_out_channels', 'channels'):
        if d.get(key) == 256:
            d[key] = 32
    if d.get('fc_out_channels') == 1024:
        d['fc_out_channels'] = 64
    if d.get('num_classes') == 80:
        d['num_classes'] = 2
    if d.get('stacked_convs') == 4:
        d['stacked_convs'] = 1
    if d.get('type') == 'SyncBN':  # one image per GPU would use SyncBN
        d['type'] = 'BN'


def tiny_cfg(case, data):
    from mmengine.config import Config
    name, _, frozen = case.partition('@frozen')
    cfg = Config.fromfile(osp.join(ROOT, CASES[name]))
    m = cfg.model
    dims = tiny_backbone(m.backbone)
    if frozen:
        m.backbone.frozen_stages = int(frozen)
    out = m.backbone.get('out_indices', (3, ))
    if name in MMDET:
        for part in ('rpn_head', 'roi_head', 'bbox_head', 'neck'):
            if part in m:
                _walk(m[part], _narrow)
        m.neck.in_channels = [dims[i] for i in out]
        _walk(m.test_cfg, lambda d: d.update(score_thr=0.0)
              if 'score_thr' in d else None)
        if 'rpn' in m.train_cfg:
            m.train_cfg.rpn.allowed_border = -1
        ds = set_loader(cfg.train_dataloader, data['coco'],
                        ann_file='annotations/instances_train2017.json',
                        metainfo=dict(classes=('person', 'car')))
        # instaboostfast is an optional package; the model is HTC++'s
        ds.pipeline = [t for t in ds.pipeline if t.type != 'InstaBoost']
    elif name in MMSEG:
        m.decode_head.update(in_channels=dims, channels=32)
        m.auxiliary_head.update(in_channels=dims[2], channels=16)
        m.data_preprocessor.size = (SIZE, SIZE)
        _walk(m, _narrow)
        ds = set_loader(cfg.train_dataloader, data['ade'])
    else:
        m.head.update(num_classes=3, in_channels=dims[3])
        cfg.data_preprocessor.num_classes = 3
        ds = set_loader(cfg.train_dataloader, data['imagenet'])
        cfg.optim_wrapper.pop('accumulative_counts', None)
    shrink_pipeline(ds.pipeline, SIZE)
    cfg.pop('auto_scale_lr', None)
    return cfg


def main(out_dir, cases):
    from mmum.utils.dist import setup_cpu_distributed
    rank = int(os.environ['RANK'])
    data = dict(coco=osp.join(out_dir, 'coco'), ade=osp.join(out_dir, 'ade'),
                imagenet=osp.join(out_dir, 'imagenet'))
    results = {}
    for case in cases:
        try:
            cfg = tiny_cfg(case, data)
            cfg.launcher = 'pytorch'
            cfg.env_cfg = dict(dist_cfg=dict(backend='gloo', timeout=120))
            setup_cpu_distributed(cfg, 'pytorch')
            assert not cfg.model_wrapper_cfg.get('find_unused_parameters')
            runner, _ = run_cfg(cfg, osp.join(out_dir, 'work', case),
                                iters=2, test=False)
            assert runner.iter == 2, runner.iter
            results[case] = 'ok'
        except Exception:  # noqa: BLE001  record, go on with the next case
            results[case] = traceback.format_exc()[-3000:]
        torch.distributed.barrier()
    with open(osp.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
