"""Bad input from users' reports (issue 15), each turned into a test of the
correct behaviour: a clear error (type + the bad value / file + what is
valid) or, where mmum now makes it work, the correct result.

1. prefix='backbone.' for a backbone-only file          -> loads, log says so
2. checkpoint of another architecture (mmpretrain Swin)  -> ValueError, keys
3. truncated checkpoint; --resume with a broken latest   -> names file(s)
4. FreezeOutLR without FreezeOutHook (train and resume)  -> names the hook
5. mask ratios at the edges                              -> range errors
6. decoder built for another grid                        -> runs at any grid
7. UniformMasking's size hint                            -> accepted size
+  DecoderPruningHook: a pruned decoder's loss leaves the log.
"""
import copy
import logging
import os
import os.path as osp
import uuid

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import _load_checkpoint

import mmum  # noqa: F401
from mmum.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SWIN = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT_ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 2], mlp_ratios=[2, 2, 2, 2])
TWINS_ARCH = dict(embed_dims=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                  num_heads=[1, 1, 2, 2], patch_sizes=[4, 2, 2, 2],
                  strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                  sr_ratios=[8, 4, 2, 1], window_sizes=[4, 4, 4, 4])


pytestmark = pytest.mark.usefixtures('one_thread')


class LogCapture:
    """Messages logged through mmengine's current logger."""

    def __enter__(self):
        self.messages = []
        self.handler = logging.Handler()
        self.handler.emit = lambda r: self.messages.append(r.getMessage())
        self.logger = MMLogger.get_current_instance()
        self.logger.addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def build(cfg):
    return MODELS.build(copy.deepcopy(cfg))


def save(path, state_dict, prefix=''):
    torch.save({'state_dict': {prefix + k: v for k, v in state_dict.items()},
                'meta': {}}, str(path))
    return str(path)


def init_from(cfg, checkpoint, prefix='backbone.', **init):
    """Build ``cfg`` with a Pretrained init_cfg and run init_weights."""
    cfg = dict(copy.deepcopy(cfg), init_cfg=dict(
        type='Pretrained', checkpoint=checkpoint, prefix=prefix, **init))
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def assert_same_weights(model, state_dict, skip=()):
    own = model.state_dict()
    for k, v in state_dict.items():
        if k in own and not any(s in k for s in skip):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)


# ------------------------------------ 1. prefix for a backbone-only file
FINETUNE_BACKBONES = {
    'CPBSwinTransformer': dict(type='mmum.CPBSwinTransformer', arch=SWIN,
                               img_size=64, window_size=4),
    'PVT': dict(type='mmum.PVT', arch=PVT_ARCH, img_size=64),
    # GreenMIM configs: mmpretrain's Swin with mmum's strict Pretrained
    'mmpretrain SwinTransformer': dict(type='mmpretrain.SwinTransformer',
                                       arch=SWIN, img_size=64, window_size=4),
}


@pytest.mark.parametrize('name', list(FINETUNE_BACKBONES))
def test_prefix_on_backbone_only_file_loads_and_says_so(name, tmp_path):
    """The layout tools/model_converters/extract_backbone.py writes, loaded
    with the prefix the downstream configs use."""
    cfg = FINETUNE_BACKBONES[name]
    torch.manual_seed(0)
    source = build(cfg)
    path = save(tmp_path / 'backbone_only.pth', source.state_dict())
    torch.manual_seed(1)  # other random init: loading must overwrite it
    init = {'_scope_': 'mmum'} if name.startswith('mmpretrain') else {}
    with LogCapture() as log:
        model = init_from(cfg, path, **init)
    assert_same_weights(model, source.state_dict())
    assert any('backbone_only.pth' in m and "'backbone.'" in m
               and 'without the prefix' in m for m in log), log


def test_prefix_that_matches_nothing_names_file_prefix_and_fix(tmp_path):
    src = build(FINETUNE_BACKBONES['CPBSwinTransformer'])
    path = save(tmp_path / 'other_layout.pth', src.state_dict(), 'encoder.')
    with pytest.raises(ValueError) as info:
        init_from(FINETUNE_BACKBONES['CPBSwinTransformer'], path)
    msg = str(info.value)
    for word in ('other_layout.pth', "'backbone.'", "'encoder.'",
                 'init_cfg.prefix'):
        assert word in msg, (word, msg)


# --------------------------- 2. checkpoint of another architecture refused
def tiny_backbone(cfg_backbone):
    """A downstream config's backbone, shrunk (same type and options)."""
    cfg = copy.deepcopy(cfg_backbone)
    if cfg['type'].split('.')[-1] in ('SVT', 'GreenTwins'):
        cfg.update(arch=TWINS_ARCH)  # SVT takes any image size
        cfg.pop('init_cfg')
        return cfg
    arch = PVT_ARCH if 'PVT' in cfg['type'] else SWIN
    cfg.update(arch=arch, img_size=64)
    if 'window_size' in cfg:
        cfg['window_size'] = 4
    cfg.pop('init_cfg')
    return cfg


def downstream_configs():
    out = []
    for folder in ('finetune', 'mmdet', 'mmseg'):
        d = osp.join(ROOT, 'configs', folder)
        out += [osp.join(folder, f) for f in sorted(os.listdir(d))
                if f.endswith('.py')]
    return out


def um_swin_checkpoint(tmp_path):
    """`backbone.` weights of a small UM-MAE Swin (continuous position
    bias), as a UM-MAE pre-training checkpoint holds them."""
    torch.manual_seed(0)
    um = build(dict(type='mmum.UMSwinTransformer', arch=SWIN, img_size=32,
                    window_size=4))
    return um, save(tmp_path / 'um_mae_swin.pth', um.state_dict(),
                    'backbone.')


def test_cpb_checkpoint_into_green_mim_finetune_config_refused(tmp_path):
    """The issue's case: every relative_position_bias_table would stay
    random; now a ValueError names the missing and unexpected keys."""
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/finetune/green_mim_swin_b_100e.py'))
    backbone = tiny_backbone(cfg.model.backbone)
    _, path = um_swin_checkpoint(tmp_path)
    init = {k: v for k, v in cfg.model.backbone.init_cfg.items()
            if k not in ('type', 'checkpoint', 'prefix')}
    with pytest.raises(ValueError) as info:
        init_from(backbone, path, **init)
    msg = str(info.value)
    for word in ('um_mae_swin.pth', 'SwinTransformer', 'missing',
                 'relative_position_bias_table', 'unexpected', 'cpb',
                 'another architecture'):
        assert word in msg, (word, msg)


@pytest.mark.parametrize('config', downstream_configs())
def test_every_downstream_config_refuses_another_architecture(config,
                                                              tmp_path):
    """Each downstream config's backbone (shrunk) with its own init_cfg:
    a checkpoint of another family is refused, the matching pre-training
    checkpoint loads (mask_token and output norms differ by design)."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    init = cfg.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone.'
    extra = {k: v for k, v in init.items()
             if k not in ('type', 'checkpoint', 'prefix')}
    backbone = tiny_backbone(cfg.model.backbone)
    torch.manual_seed(0)
    if backbone['type'].split('.')[-1] in ('SVT', 'GreenTwins'):
        wrong, _ = um_swin_checkpoint(tmp_path)
        right = build(dict(type='mmum.GreenTwins', arch=TWINS_ARCH,
                           norm_after_stage=backbone['norm_after_stage'],
                           qkv_bias=backbone['qkv_bias']))
    elif 'PVT' in backbone['type']:
        wrong = build(FINETUNE_BACKBONES['CPBSwinTransformer'])
        right = build(dict(type='mmum.UMPVT', arch=PVT_ARCH, img_size=32))
    elif backbone['type'].startswith('mmpretrain'):
        wrong, _ = um_swin_checkpoint(tmp_path)
        right = build(dict(type='mmum.GreenSwinTransformer', arch=SWIN,
                           img_size=64, window_size=4))
    else:
        wrong = build(FINETUNE_BACKBONES['mmpretrain SwinTransformer'])
        # the UM-MAE encoder in the config's own layout (released: conv
        # patch merging, narrow bias MLP, released eps)
        layout = {k: backbone[k] for k in (
            'patch_merging', 'cpb_hidden_dims', 'norm_cfg', 'patch_cfg',
            'stage_cfgs') if k in backbone}
        right = build(dict(type='mmum.UMSwinTransformer', arch=SWIN,
                           img_size=32, window_size=4, **layout))
    bad = save(tmp_path / 'wrong.pth', wrong.state_dict(), 'backbone.')
    with pytest.raises(ValueError, match='wrong.pth.*(missing|unexpected)'):
        init_from(backbone, bad, **extra)
    good = save(tmp_path / 'right.pth', right.state_dict(), 'backbone.')
    model = init_from(backbone, good, **extra)
    assert_same_weights(model, right.state_dict(), skip=('pos_embed', ))


# ------------------------------------------------- 3. truncated checkpoints
@pytest.mark.parametrize('zip_format', [True, False])
@pytest.mark.parametrize('keep', [0.9, 0.5, 0.34, 0.1])
def test_truncated_checkpoint_names_the_file(keep, zip_format, tmp_path):
    from mmum.engine.checkpoint import checkpoint_problem
    model = build(FINETUNE_BACKBONES['CPBSwinTransformer'])
    path = str(tmp_path / 'iter_8.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 8},
                'optimizer': {'state': {}, 'param_groups': []}}, path,
               _use_new_zipfile_serialization=zip_format)
    assert checkpoint_problem(path) is None
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])
    with pytest.raises(RuntimeError) as info:
        _load_checkpoint(path, map_location='cpu')
    msg = str(info.value)
    assert 'iter_8.pth' in msg and 'truncated' in msg, msg
    assert 'truncated' in checkpoint_problem(path)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """tools/train.py, 4 iterations of the tiny classifier, checkpoints at
    2 and 4."""
    from _tiny_runs import TINY_CFG, load_tool, make_image_folder
    os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    data = make_image_folder(str(tmp_path_factory.mktemp('images')))
    tool = load_tool('train')

    def args(work_dir, *extra):
        return [TINY_CFG, '--work-dir', str(work_dir), *extra,
                '--cfg-options', f'train_dataloader.dataset.data_root={data}',
                f'experiment_name=t{uuid.uuid4().hex[:8]}']

    full = tmp_path_factory.mktemp('full')
    tool.main(args(full))
    return tool, args, full


def test_resume_with_broken_latest_names_it_and_the_intact_one(
        tmp_path, tiny_run):
    import shutil
    tool, args, full = tiny_run
    work = tmp_path / 'work'
    shutil.copytree(full, work)
    latest = work / 'iter_4.pth'
    data = latest.read_bytes()
    latest.write_bytes(data[:len(data) // 10])
    (work / 'last_checkpoint').write_text(str(latest))
    with pytest.raises(RuntimeError) as info:  # never silently
        tool.main(args(work, '--resume'))
    msg = str(info.value)
    for word in ('iter_4.pth', 'truncated', str(work / 'iter_2.pth'),
                 '--resume-from-intact'):
        assert word in msg, (word, msg)
    # asked for: resumes from iter_2 and trains iterations 3 and 4 again
    runner = tool.main(args(work, '--resume', '--resume-from-intact'))
    assert runner.iter == 4
    ckpt = torch.load(str(latest), map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    ref = torch.load(str(full / 'iter_4.pth'), map_location='cpu')
    for k, v in ref['state_dict'].items():
        torch.testing.assert_close(ckpt['state_dict'][k], v, msg=k)


def test_resume_without_any_intact_checkpoint(tmp_path):
    from mmum.engine.checkpoint import check_resume_checkpoint
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    with pytest.raises(RuntimeError, match=r'iter_2.pth is empty.*No intact'):
        check_resume_checkpoint(cfg, from_intact=True)


# ------------------------------------------ 4. FreezeOutLR without its hook
def test_freezeout_without_hook_stops_tools_train_before_building(tmp_path):
    from _tiny_runs import load_tool
    cfg_path = osp.join(ROOT, 'configs/vitfreeze/vit_b_100e.py')
    hooks = [h for h in Config.fromfile(cfg_path).custom_hooks
             if h['type'] != 'mmum.FreezeOutHook']
    assert hooks != Config.fromfile(cfg_path).custom_hooks
    cfg_file = tmp_path / 'no_hook.py'
    cfg_file.write_text(f'_base_ = [{cfg_path!r}]\n'
                        f'custom_hooks = {hooks!r}\n')
    root = tmp_path / 'imagenet'
    (root / 'train').mkdir(parents=True)
    (root / 'meta').mkdir()
    (root / 'meta' / 'train.txt').write_text('a.JPEG 0\n')
    with pytest.raises(ValueError) as info:
        load_tool('train').main([
            str(cfg_file), '--work-dir', str(tmp_path / 'w'),
            '--cfg-options', f'train_dataloader.dataset.data_root={root}'])
    msg = str(info.value)
    assert 'FreezeOutLR' in msg and "dict(type='mmum.FreezeOutHook')" in msg
    assert not (tmp_path / 'w').exists()  # nothing built, nothing written


def test_freezeout_resume_without_hook_names_the_hook(tmp_path):
    """Resuming after layers froze, without FreezeOutHook: instead of
    torch's "different number of parameter groups", the error says which
    layers were frozen and which hook restores them."""
    from test_decoder_pruning import make_runner

    from mmum.engine.hooks import FreezeOutHook
    full, _ = make_runner(tmp_path / 'full', max_iters=10)
    full.train()
    last = str(tmp_path / 'full' / 'iter_10.pth')
    resumed, _ = make_runner(tmp_path / 'resumed', resume_from=last)
    resumed._hooks = [h for h in resumed._hooks
                      if not isinstance(h, FreezeOutHook)]
    with pytest.raises(ValueError) as info:
        resumed.train()
    msg = str(info.value)
    assert 'layers [0, 1, 2]' in msg and \
        "dict(type='mmum.FreezeOutHook')" in msg, msg


def test_freezeout_runner_without_hook_warns_when_freezing(tmp_path):
    """Built without tools/train.py (no config check): the first freeze
    logs a warning naming the hook; with the hook there is none."""
    from test_decoder_pruning import make_runner

    from mmum.engine.hooks import FreezeOutHook
    for with_hook in (False, True):
        runner, _ = make_runner(tmp_path / str(with_hook), max_iters=7)
        if not with_hook:
            runner._hooks = [h for h in runner._hooks
                             if not isinstance(h, FreezeOutHook)]
        with LogCapture() as log:
            runner.train()
        warned = [m for m in log if 'no mmum.FreezeOutHook' in m]
        assert bool(warned) != with_hook, log


# ------------------------------------------------------ 5. masking ratios
def green_mim(**kw):
    from test_green_mim import _tiny_model
    return _tiny_model(**kw)


def local_mim(**kw):
    from test_local_mim import tiny_local_mim
    return tiny_local_mim(**kw)


def um_vit(**kw):
    return build(dict(type='mmum.UMViT', arch=dict(
        embed_dims=32, num_layers=1, num_heads=2, feedforward_channels=32),
        img_size=32, patch_size=8, **kw))


def uniform_masking(ratio, size=64):
    from mmum.datasets.transforms import UniformMasking
    return UniformMasking(secondary_ratio=ratio).transform(
        dict(img=np.zeros((size, size, 3))))


RATIO_CASES = {
    'GreenMIM mask_ratio=0.0': (lambda: green_mim(mask_ratio=0.0),
                                ['0.0', '(0, 1)', 'masked']),
    'GreenMIM keeps no unit': (
        lambda: green_mim(mask_ratio=0.99).random_mask(
            torch.zeros(1, 3, 128, 128)),
        ['0.99', 'keeps 0 of the 16', '4x4']),
    'LocalMIM ViT mask_ratio=0.0': (lambda: local_mim(mask_ratio=0.0),
                                    ['0.0', '(0, 1)', 'NaN']),
    'LocalMIM ViT mask_ratio=1.0': (lambda: local_mim(mask_ratio=1.0),
                                    ['1.0', '(0, 1)']),
    'LocalMIM ViT keeps no patch': (lambda: local_mim(mask_ratio=0.95),
                                    ['0.95', 'keeps 0 of the 16']),
    "UMViT 'RS' mask_ratio=0.0": (
        lambda: um_vit(sampling='RS', mask_ratio=0.0),
        ['0.0', '(0, 1)', "'RS'"]),
    "UMViT 'RS' keeps no patch": (
        lambda: um_vit(sampling='RS', mask_ratio=0.95).sample(1, (4, 4),
                                                              'cpu'),
        ['0.95', 'keeps 0 of the 16']),
    'UMViT secondary masks every sampled patch': (
        lambda: um_vit(secondary_ratio=0.9)(torch.zeros(1, 3, 32, 32)),
        ['0.9', 'all 4 sampled']),
    'UniformMasking secondary masks every visible patch': (
        lambda: uniform_masking(0.9),
        ['0.9', 'all 4 visible', '4x4']),
}


@pytest.mark.parametrize('case', list(RATIO_CASES))
def test_ratio_outside_the_defined_range(case):
    fn, words = RATIO_CASES[case]
    with pytest.raises(ValueError) as info:
        fn()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize('ratio', [0.05, 0.5, 0.9])
def test_accepted_ratios_give_finite_losses(ratio):
    from test_green_mim import _samples
    torch.manual_seed(0)
    losses = green_mim(mask_ratio=ratio).loss(torch.randn(1, 3, 128, 128),
                                              _samples(1))
    assert torch.isfinite(losses['loss'])
    model = local_mim(mask_ratio=min(ratio, 0.9))
    losses = model.loss(torch.rand(2, 3, 32, 32), None)
    assert len(losses) == 4
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    vit = um_vit(sampling='RS', mask_ratio=ratio)
    latent, mask, _ = vit(torch.zeros(1, 3, 32, 32))
    assert 0 < mask.sum() < 16 and torch.isfinite(latent).all()
    if ratio < 0.9:  # 0.9 of 4 visible patches rounds to all of them
        r = uniform_masking(ratio)
        assert 0 <= r['secondary_mask'].sum() < 4


# ------------------------------------------ 6. decoders at any patch grid
def test_sincos_positions_any_grid():
    from mmpretrain.models.utils import build_2d_sincos_position_embedding

    from mmum.models.grid import sincos_positions
    square = build_2d_sincos_position_embedding(6, 16)
    torch.testing.assert_close(sincos_positions((6, 6), 16), square)
    # a 2x3 grid: token (r, c) gets the same code as (r, c) in the square
    rect = sincos_positions((2, 3), 16)[0]
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(rect[r * 3 + c], square[0, r * 6 + c])


def um_mae(num_patches):
    from test_um_mae import build as build_um_mae
    model = build_um_mae()
    model.neck.num_patches = num_patches
    return model


def test_um_mae_decoder_built_for_256_runs_at_512():
    """The issue's case (was: index 289 is out of bounds): the decoder built
    for 16x16 patches predicts a 512-px batch exactly as one built for
    32x32 patches with the same weights."""
    from test_um_mae import batch
    for decoder in ('mmum.UMMAEPretrainDecoder',
                    'mmum.UMMAEEmbedFirstDecoder'):
        torch.manual_seed(0)
        from test_um_mae import CFG
        cfg = copy.deepcopy(CFG.model)
        cfg.backbone.arch = SWIN
        cfg.neck.update(type=decoder, embed_dim=256, decoder_embed_dim=64,
                        decoder_num_heads=2, num_patches=256)
        small = build(cfg)
        small.init_weights()
        cfg.neck.num_patches = 1024
        big = build(cfg)
        big.init_weights()
        state = {k: v for k, v in small.state_dict().items()
                 if 'decoder_pos_embed' not in k}
        big.load_state_dict(state, strict=False)
        x, samples = batch(n=1, size=512)
        with torch.no_grad():
            a, b = small.loss(x, samples), big.loss(x, samples)
        assert torch.isfinite(a['loss'])
        torch.testing.assert_close(a['loss'], b['loss'])


def test_green_mim_decoder_runs_at_another_grid():
    """Built for 128 px (4x4 units), at 256 px (8x8) equal to a decoder
    built for 8x8."""
    from test_green_mim import _samples

    from mmum.models.grid import sincos_positions
    small = green_mim()
    big = green_mim()  # its decoder built for 8x8 units
    big.neck.num_patches = 64
    big.neck.decoder_pos_embed = torch.nn.Parameter(torch.cat(
        [torch.zeros(1, 1, 64), sincos_positions((8, 8), 64)], 1),
        requires_grad=False)
    big.load_state_dict({k: v for k, v in small.state_dict().items()
                         if 'decoder_pos_embed' not in k}, strict=False)
    x = torch.randn(1, 3, 256, 256)
    for model in (small, big):
        torch.manual_seed(3)
        model.out = model.loss(x, _samples(1))['loss']
    assert torch.isfinite(small.out)
    torch.testing.assert_close(small.out, big.out)


def test_um_local_mim_runs_at_another_size():
    from test_local_mim import tiny_um_local_mim, um_batch
    model = tiny_um_local_mim()  # built for 128 px
    img, samples = um_batch(size=256)
    losses = model.loss(img, samples)
    assert sorted(losses) == ['loss_16x16', 'loss_32x32', 'loss_64x64',
                              'loss_8x8']
    assert all(torch.isfinite(v) for v in losses.values())


def test_local_mim_vit_other_grid_names_both_grids():
    model = local_mim()  # built for 32 px, 8-px patches: 4x4
    with pytest.raises(ValueError) as info:
        model.loss(torch.rand(1, 3, 64, 64), None)
    msg = str(info.value)
    for word in ('LocalMIMViT', '4x4 patch grid', '32x32 px', '64x64 image',
                 '8x8 patches', 'img_size=64'):
        assert word in msg, (word, msg)
    with pytest.raises(ValueError, match=r'built for a 4x4 patch grid but '
                       'got 64 patches'):
        model.neck[0](torch.zeros(1, 17, 32), torch.zeros(1, 64).long())


def test_visualiser_size_other_than_the_model(tmp_path):
    """visualize_reconstruction.py --size 256 on a model built for 128."""
    import cv2

    from mmum.visualization import visualize_um_mae
    from test_um_mae import build as build_um_mae
    model = build_um_mae()
    model.neck.num_patches = 64  # decoder built for 128 px
    img = str(tmp_path / 'img.png')
    cv2.imwrite(img, np.random.RandomState(0).randint(
        0, 255, (300, 280, 3)).astype(np.uint8))
    out = visualize_um_mae(model, [img], str(tmp_path / 'out.png'), size=256)
    assert cv2.imread(out).shape[1] >= 4 * 256


# ----------------------------------------- 7. hints that the pipeline takes
@pytest.mark.parametrize('side', [100, 250, 300, 400, 600, 1000])
def test_uniform_masking_hint_is_accepted_by_the_encoders(side):
    import re

    from mmum.datasets.transforms import UniformMasking
    with pytest.raises(ValueError) as info:
        UniformMasking().transform(dict(img=np.zeros((side, side, 3))))
    msg = str(info.value)
    hint = int(re.search(r'e\.g\. (\d+)x\1', msg).group(1))
    if side == 250:
        assert f'{side}x{side}' in msg and 'e.g. 256x256' in msg, msg
    UniformMasking().grid((hint, hint))
    compact = (hint // 2, hint // 2)
    for window in (8, 16):  # the UM-MAE Swin configs' windows
        swin = build(dict(type='mmum.UMSwinTransformer', arch=SWIN,
                          window_size=window, img_size=compact[0]))
        swin.check_compact_input(compact)
    pvt = build(dict(type='mmum.UMPVT', arch=PVT_ARCH, img_size=compact[0]))
    pvt.check_compact_input(compact, torch.zeros(1, hint // 32, hint // 32))


@pytest.mark.parametrize('side', [100, 250, 300])
def test_green_mim_size_hint_is_accepted(side):
    """GreenMIM's hints (mask unit, then the window check of the encoder)
    name a size that trains."""
    import re

    from test_green_mim import _samples
    model = green_mim()  # window 4
    with pytest.raises(ValueError) as info:
        model.loss(torch.randn(1, 3, side, side), _samples(1))
    hint = int(re.search(r'e\.g\. (\d+)x\1', str(info.value)).group(1))
    assert f'{side}x{side}' in str(info.value)
    loss = model.loss(torch.randn(1, 3, hint, hint), _samples(1))['loss']
    assert torch.isfinite(loss)
    big = green_mim(arch=dict(embed_dims=16, depths=(2, 2, 2, 2),
                              num_heads=(1, 1, 2, 2)))
    big.backbone.window_size = 7  # the configs' window: 250 -> 224
    assert big.backbone.suggest_size(250) == 224 and \
        not big.backbone.fits(256)


# ------------------------------- DecoderPruningHook: no stale loss in logs
def test_pruned_decoder_loss_leaves_the_log(tmp_path):
    """What the LoggerHook sees each iteration: the losses of the decoders
    still in use, not the last smoothed value of a pruned one -- also after
    a resume right after a pruning."""
    from mmengine.hooks import Hook

    from test_decoder_pruning import make_runner

    class Logged(Hook):
        priority = 'BELOW_NORMAL'  # with the LoggerHook, after it

        def __init__(self):
            self.rows = {}

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            model = runner.model
            self.rows[runner.iter] = (
                sorted(k[6:] for k in runner.message_hub.log_scalars
                       if k.startswith('train/loss_')),
                sorted(model.decoder_loss_keys[k]
                       for k in range(4) if k not in model.pruned_decoders))

    names = ['loss_16x16', 'loss_8x8', 'loss_4x4', 'loss_2x2']
    runner, _ = make_runner(tmp_path / 'full')
    logged = Logged()
    runner.register_hook(logged)
    runner.train()
    rows = logged.rows
    for it, (keys, active) in rows.items():
        assert keys == active, it
    assert rows[11][0] == ['loss_2x2']
    assert sorted(rows[0][0]) == sorted(names)
    resumed, _ = make_runner(tmp_path / 'resumed',
                             resume_from=str(tmp_path / 'full' / 'iter_8.pth'))
    logged = Logged()
    resumed.register_hook(logged)
    resumed.train()
    assert sorted(logged.rows) == list(range(8, 12))
    for it, (keys, active) in logged.rows.items():
        assert keys == active, it


def test_strict_pretrained_keeps_swin_window_resizing(tmp_path):
    """GreenMIM Swin-L pre-trains with window 14 and fine-tunes with 7: the
    bias tables of another window are resized by mmpretrain's load hook, so
    the strict init accepts them (and loads the resized tables)."""
    torch.manual_seed(0)
    green = build(dict(type='mmum.GreenSwinTransformer', arch=SWIN,
                       img_size=64, window_size=8))
    path = save(tmp_path / 'green.pth', green.state_dict(), 'backbone.')
    model = init_from(FINETUNE_BACKBONES['mmpretrain SwinTransformer'], path,
                      _scope_='mmum')
    key = 'stages.0.blocks.0.attn.w_msa.relative_position_bias_table'
    assert green.state_dict()[key].shape[0] == 15 * 15
    assert model.state_dict()[key].shape[0] == 7 * 7
    assert_same_weights(model, green.state_dict(),
                        skip=('relative_position', ))
