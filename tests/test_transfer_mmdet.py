"""COCO detection configs (configs/mmdet) end to end on a tiny generated
COCO (boxes + polygon masks): the real configs shrunk to tiny models,
started from a short UM-MAE / GreenMIM pre-training run, a few iterations
through mmdet's Runner (SyncBN replaced by BN), evaluated with mmdet's
CocoMetric (bbox, and segm for the instance-segmentation detectors)."""
import math
import os.path as osp

import pytest
from mmengine.config import Config

from transfer_data import (CLASSES, PVT_TINY, ROOT, SWIN_TINY, TWINS_TINY,
                           assert_backbone_from, cache_root, cpu_norms,
                           make_coco, pretrain, run_cfg, set_loader,
                           shrink_pipeline)

SIZE = 64
WIDTH = 32  # FPN / head channels (256 in the configs)
CASES = {
    # config, backbone, pre-training run, metrics
    'gfl_swin': ('configs/mmdet/gfl_um_mae_swin_t_fpn_lsj-25e_coco.py',
                 'swin', 'um_mae_swin', ['bbox']),
    'gfl_pvt': ('configs/mmdet/gfl_um_mae_pvt_s_fpn_lsj-25e_coco.py',
                'pvt', 'um_mae_pvt', ['bbox']),
    'mask_rcnn_1x': ('configs/mmdet/mask-rcnn_green_mim_swin_b_fpn_1x_coco.py',
                     'swin', 'green_mim_swin', ['bbox', 'segm']),
    'mask_rcnn_3x': (
        'configs/mmdet/mask-rcnn_green_mim_swin_b_fpn_ms-crop-3x_coco.py',
        'swin', 'green_mim_swin', ['bbox', 'segm']),
    'mask_rcnn_twins': (
        'configs/mmdet/mask-rcnn_green_mim_twins_l_fpn_1x_coco.py', 'twins',
        'green_mim_twins', ['bbox', 'segm']),
    'htcpp': ('configs/mmdet/htcpp_um_mae_swin_l_fpn_ms-36e_coco.py',
              'swin', 'um_mae_swin', ['bbox', 'segm']),
}


def _narrow(d):
    """256-channel necks / heads -> WIDTH, 80 classes -> len(CLASSES)."""
    for key in ('in_channels', 'out_channels', 'feat_channels',
                'conv_out_channels'):
        if d.get(key) == 256:
            d[key] = WIDTH
    if d.get('fc_out_channels') == 1024:
        d['fc_out_channels'] = 2 * WIDTH
    if d.get('num_classes') == 80:
        d['num_classes'] = len(CLASSES)
    if d.get('stacked_convs') == 4:
        d['stacked_convs'] = 1


def _walk(obj, fn):
    if isinstance(obj, dict):
        fn(obj)
        for v in obj.values():
            _walk(v, fn)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, fn)


def tiny_detector(case, checkpoint, data_root):
    path, arch, _, metrics = CASES[case]
    cfg = Config.fromfile(osp.join(ROOT, path))
    m = cfg.model
    if arch == 'twins':  # mmpretrain's SVT takes any image size
        m.backbone.update(arch=TWINS_TINY, drop_path_rate=0.)
    else:
        m.backbone.update(arch=SWIN_TINY if arch == 'swin' else PVT_TINY,
                          img_size=SIZE)
    m.backbone.init_cfg.checkpoint = checkpoint
    if 'cpb_hidden_dims' in m.backbone:
        # the tiny UM-MAE run is the Swin-T recipe (32-wide bias MLP); the
        # Swin-L configs' 64 would not load it
        m.backbone.cpb_hidden_dims = 32
    if m.backbone.type == 'mmpretrain.SwinTransformer':
        # the window of the tiny GreenMIM run (the real Swin-B recipe keeps
        # its window 7 too); resizing the bias table would go through
        # mmpretrain's scipy interp2d, removed in SciPy 1.14
        m.backbone.window_size = 4
    for part in ('rpn_head', 'roi_head', 'bbox_head', 'neck'):
        if part in m:
            _walk(m[part], _narrow)
    dims = dict(swin=[32, 64, 128, 256], pvt=PVT_TINY['embed_dims'],
                twins=TWINS_TINY['embed_dims'])[arch]
    # the stages the config outputs (GFL: 1-3, the ones its FPN reads)
    m.neck.in_channels = [dims[i] for i in m.backbone.out_indices]
    # a detector after 2 tiny steps scores ~0.01: keep every box, so that
    # CocoMetric has detections to score
    _walk(m.test_cfg, lambda d: d.update(score_thr=0.0) if 'score_thr' in d
          else None)
    if 'rpn' in m.train_cfg:  # tiny multi-scale images: no anchor fits inside
        m.train_cfg.rpn.allowed_border = -1
    cpu_norms(cfg)
    ann = dict(train='annotations/instances_train2017.json',
               test='annotations/instances_val2017.json')
    for split, loader in (('train', cfg.train_dataloader),
                          ('test', cfg.test_dataloader)):
        ds = set_loader(loader, data_root, ann_file=ann[split],
                        metainfo=dict(classes=CLASSES))
        shrink_pipeline(ds.pipeline, SIZE)
    cfg.test_evaluator = dict(type='CocoMetric', metric=metrics,
                              ann_file=osp.join(data_root, ann['test']))
    return cfg


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return cache_root(tmp_path_factory)


def run_case(root, case):
    _, _, run, metrics = CASES[case]
    data = osp.join(root, 'coco')
    if not osp.isdir(data):
        make_coco(data, num_images=4, size=SIZE, stuff=True)
    ckpt = pretrain(run, root)
    cfg = tiny_detector(case, ckpt, data)
    assert 'SyncBN' not in cfg.pretty_text
    runner, results = run_cfg(cfg, osp.join(root, case))
    assert runner.iter == 2
    assert_backbone_from(runner, ckpt)
    for metric in metrics:
        for k in ('mAP', 'mAP_50', 'mAP_75'):
            v = results[f'coco/{metric}_{k}']
            assert math.isfinite(v) and -1 <= v <= 1, (metric, k, v)
    print('METRICS', case, results)
    return results


@pytest.mark.parametrize('case',
                         ['gfl_swin', 'mask_rcnn_1x', 'mask_rcnn_twins'])
def test_detector_trains_and_evaluates(root, case):
    run_case(root, case)


@pytest.mark.slow
@pytest.mark.parametrize('case', ['gfl_pvt', 'mask_rcnn_3x', 'htcpp'])
def test_detector_trains_and_evaluates_slow(root, case):
    run_case(root, case)
