"""GreenMIM with the visible-only Twins-SVT (configs/green_mim/twins_l_800e.py)
and its SimMIM baseline: training, checkpoints, benchmark rows."""
import copy
import importlib.util
import io
import os.path as osp
from contextlib import redirect_stdout

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmpretrain.models import SVT
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.registry import MODELS
from _tiny_runs import fit

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = osp.join(ROOT, 'configs', 'green_mim', 'twins_l_800e.py')
CFG_SIMMIM = osp.join(ROOT, 'configs', 'simmim', 'twins_l_224_800e.py')
CFG_MMDET = osp.join(ROOT, 'configs', 'mmdet',
                     'mask-rcnn_green_mim_twins_l_fpn_1x_coco.py')
# 128 px, 4x4 windows: stage maps 32/16/8/4, a 4x4 grid of 32-px units
TINY = dict(embed_dims=[8, 16, 32, 64], depths=[2, 2, 2, 2],
            num_heads=[1, 1, 2, 2], patch_sizes=[4, 2, 2, 2],
            strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], window_sizes=[4, 4, 4, 4])


pytestmark = pytest.mark.usefixtures('one_thread')


def _tiny_model():
    cfg = Config.fromfile(CFG).model
    cfg.backbone.arch = TINY
    cfg.neck.update(num_patches=16, embed_dim=64, decoder_embed_dim=32,
                    decoder_num_heads=2)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def _samples(n):
    return [DataSample() for _ in range(n)]


def _backbone_state(path):
    state = torch.load(path)['state_dict']
    return {k[len('backbone.'):]: v for k, v in state.items()
            if k.startswith('backbone.')}


def test_config_is_the_paper_recipe():
    cfg = Config.fromfile(CFG)
    assert cfg.model.type == 'mmum.GreenMIM'
    assert cfg.model.mask_unit == 32 and cfg.model.mask_ratio == 0.75
    assert cfg.model.backbone.type == 'mmum.GreenTwins'
    assert cfg.model.backbone.arch == 'large'
    assert cfg.model.neck.decoder_embed_dim == 512
    assert cfg.model.neck.decoder_depth == 1
    assert cfg.model.neck.embed_dim == 1024
    assert cfg.model.head.norm_pix
    assert cfg.train_dataloader.batch_size * 8 == 2048
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper'
    assert ow.optimizer.lr == pytest.approx(1.5e-4 * 2048 / 256)
    assert ow.optimizer.betas == (0.9, 0.999)
    assert ow.optimizer.weight_decay == 0.05
    warm, cos = cfg.param_scheduler
    assert warm.end == 40 and warm.start_factor == 1e-3
    assert cos.end == 800 and cos.type == 'CosineAnnealingLR'
    ft = Config.fromfile(
        osp.join(ROOT, 'configs', 'finetune', 'green_mim_twins_l_100e.py'))
    assert ft.train_cfg.max_epochs == 100
    assert ft.param_scheduler[0].end == 20
    assert ft.optim_wrapper.optimizer.lr == pytest.approx(1.25e-4 * 2048 /
                                                          256)
    assert ft.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.9
    assert ft.model.backbone.drop_path_rate == 0.2


def test_tiny_loss_and_grads():
    torch.manual_seed(0)
    model = _tiny_model()
    losses = model.loss(torch.randn(2, 3, 128, 128), _samples(2))
    assert set(losses) == {'loss'} and torch.isfinite(losses['loss'])
    losses['loss'].backward()
    unused = [n for n, p in model.named_parameters()
              if p.requires_grad and p.grad is None]
    assert unused == []  # DDP can run with find_unused_parameters=False


def test_step_reads_no_device_data():
    """Masks, groupings and sparse-conv indices are planned on the host;
    the step runs on the ``meta`` device (no data to read back; the one
    planned transfer is counted in tests/test_green_mim_sync.py)."""
    torch.manual_seed(0)
    model = _tiny_model().to('meta')
    loss = model.loss(torch.randn(2, 3, 128, 128, device='meta'),
                      _samples(2))['loss']
    assert loss.device.type == 'meta'
    loss.backward()


def test_overfit_one_batch_and_load_into_svt_and_mmdet(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model()
    imgs = F.interpolate(torch.randn(2, 3, 8, 8), size=128, mode='bilinear')
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def one_batch():  # same images, same mask
        torch.manual_seed(1)
        return model.loss(imgs, _samples(2))['loss']

    losses = fit(opt, one_batch, 60)
    assert sum(losses[-5:]) / 5 < 0.35 * sum(losses[:5]) / 5, losses

    path = str(tmp_path / 'greenmim_twins.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    backbone = _backbone_state(path)
    layout = dict(arch=TINY, qkv_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
                  norm_after_stage=[False, False, False, True])
    svt = SVT(**layout)
    svt.load_state_dict(backbone, strict=True)
    model.eval()
    svt.eval()
    with torch.no_grad():
        ref = model.backbone(imgs)[-1]  # the released PEG: no residual
        # SVT adds the PEG's input back: same weights, another function
        assert not torch.allclose(svt(imgs)[-1], ref, atol=1e-2)
        # a GreenTwins with the released PEG keeps the pre-trained function
        keep = MODELS.build(dict(type='mmum.GreenTwins', peg_residual=False,
                                 **layout))
        keep.load_state_dict(backbone, strict=True)
        torch.testing.assert_close(keep.eval()(imgs)[-1], ref)
        ref = svt(imgs)[-1]

    # the mmdet Mask R-CNN config's backbone: strict load, and its own
    # init_cfg (Pretrained, prefix 'backbone.') gives the same network
    from mmdet.registry import MODELS as DET_MODELS
    cfg = copy.deepcopy(Config.fromfile(CFG_MMDET).model.backbone)
    assert cfg.type == 'mmpretrain.SVT'
    cfg.update(arch=TINY, drop_path_rate=0.)
    cfg.init_cfg.checkpoint = path
    with DefaultScope.overwrite_default_scope('mmdet'):
        det = DET_MODELS.build(cfg)
    det.load_state_dict(backbone, strict=True)
    det.init_weights()
    det.eval()
    with torch.no_grad():
        outs = det(imgs)
    assert len(outs) == 4
    torch.testing.assert_close(outs[-1], ref)  # = mmpretrain's SVT


def test_simmim_baseline_config_runs():
    """The SimMIM Twins-L baseline shrunk: whole image, mask token after the
    stride-4 patch embedding, a finite loss; its encoder weights (minus the
    mask token) load into SVT."""
    from mmpretrain.registry import MODELS as PRE_MODELS
    cfg = Config.fromfile(CFG_SIMMIM)
    assert [t.type for t in cfg.train_dataloader.dataset.pipeline][3] == \
        'SimMIMMaskGenerator'
    m = cfg.model
    m.backbone.arch = dict(TINY, window_sizes=[7, 7, 7, 7])
    m.neck.in_channels = 64
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = PRE_MODELS.build(m)
    model.init_weights()
    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        ds = DataSample()
        ds.set_mask((torch.rand(7, 7) < 0.75).repeat_interleave(
            8, 0).repeat_interleave(8, 1))
        samples.append(ds)
    loss = model.loss(torch.randn(2, 3, 224, 224), samples)['loss']
    assert torch.isfinite(loss)
    loss.backward()
    state = {k: v for k, v in model.backbone.state_dict().items()
             if k != 'mask_token'}
    SVT(arch=m.backbone.arch, qkv_bias=True,  # twins_l_layout's
        norm_after_stage=[False, False, False, True]).load_state_dict(
            state, strict=True)


def test_layer_depth_for_layer_decay():
    model = _tiny_model().backbone
    n = sum(TINY['depths']) + 2
    assert model.get_layer_depth('backbone.patch_embeds.0.projection.weight',
                                 'backbone.') == (0, n)
    assert model.get_layer_depth('backbone.stages.0.1.ffn.layers.0.0.weight',
                                 'backbone.') == (2, n)
    assert model.get_layer_depth('backbone.patch_embeds.2.norm.weight',
                                 'backbone.') == (5, n)
    assert model.get_layer_depth('backbone.position_encodings.2.proj.bias',
                                 'backbone.') == (5, n)
    assert model.get_layer_depth('backbone.norm_after_stage3.weight',
                                 'backbone.') == (n - 1, n)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (n - 1, n)


def test_benchmark_rows_tiny():
    """The GreenMIM / SimMIM Twins-L rows of benchmark_pretrain.py (tiny
    archs): tokens entering the first block are the visible quarter."""
    spec = importlib.util.spec_from_file_location(
        'benchmark_pretrain',
        osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_pretrain.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = io.StringIO()
    with redirect_stdout(out):
        results = bench.main(['--tiny', '--batch-size', '1', '--warmup', '0',
                              '--steps', '1', '--twins-l', '--methods',
                              'simmim_twins_l'])
    by = {r['name']: r for r in results}
    assert list(by) == ['simmim_twins_l', 'greenmim_twins_l']
    assert by['simmim_twins_l']['tokens'] == 56 * 56
    # int(49 * 0.25) = 12 visible units of 8x8 stage-1 tokens
    assert by['greenmim_twins_l']['tokens'] == 12 * 64
    g = by['greenmim_twins_l']
    assert g['enc_flops_x'] > 2.5 and 0 < g['grouping_pct'] < 100
    assert 'Twins-L' in out.getvalue()


@pytest.mark.slow
def test_paper_configs_build_and_run_full_size():
    """Twins-L at 224 px: the GreenMIM loss runs, the first block sees the
    visible quarter (12 of 49 units), the weights load strictly into SVT-L
    and, all visible, the encoder equals its own dense forward (SVT's with
    the released PEG, no residual)."""
    cfg = Config.fromfile(CFG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.manual_seed(0)
    imgs = torch.randn(1, 3, 224, 224)
    seen = []
    hook = model.backbone.stages[0][0].norm1.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape[1]))
    loss = model.loss(imgs, _samples(1))['loss']
    hook.remove()
    assert torch.isfinite(loss) and seen == [12 * 64]
    svt = SVT(arch='large', qkv_bias=True,
              norm_after_stage=[False, False, False, True])
    svt.load_state_dict(model.backbone.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        ours = model.backbone(imgs, torch.zeros(7, 7, dtype=torch.bool))[-1]
        ref = model.backbone(imgs)[-1].flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
