"""GreenMIM algorithm: config, masking, decoder placement, training."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.models import SwinTransformer
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.models.selfsup import green_mim
from mmum.models.selfsup.green_mim import GreenMIMDecoder
from mmum.registry import MODELS
from _tiny_runs import fit

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_B = osp.join(ROOT, 'configs', 'green_mim', 'swin_b_800e.py')
CFG_L = osp.join(ROOT, 'configs', 'green_mim', 'swin_l_800e.py')
TINY = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
NANO = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


def _tiny_model(arch=TINY, decoder_dims=64, **kw):
    """The Swin-B recipe shrunk to a small Swin with 4x4 windows for 128-px
    images (4x4 mask units) and a small decoder."""
    cfg = Config.fromfile(CFG_B).model
    cfg.backbone.update(arch=arch, img_size=128, window_size=4)
    cfg.neck.update(num_patches=16, embed_dim=arch['embed_dims'] * 8,
                    decoder_embed_dim=decoder_dims, decoder_num_heads=2)
    cfg.update(kw)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


pytestmark = pytest.mark.usefixtures('one_thread')


def _samples(n):
    return [DataSample() for _ in range(n)]


def test_tiny_config_loss_and_grads():
    torch.manual_seed(0)
    model = _tiny_model()
    losses = model.loss(torch.randn(2, 3, 128, 128), _samples(2))
    assert set(losses) == {'loss'} and torch.isfinite(losses['loss'])
    losses['loss'].backward()
    unused = [n for n, p in model.named_parameters()
              if p.requires_grad and p.grad is None]
    assert unused == []  # DDP can run with find_unused_parameters=False


@pytest.mark.slow
@pytest.mark.parametrize('path', [CFG_B, CFG_L])
def test_paper_configs_build_and_run(path):
    cfg = Config.fromfile(path)
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate')
    model = MODELS.build(cfg.model)
    model.init_weights()
    loss = model.loss(torch.randn(1, 3, 224, 224), _samples(1))['loss']
    assert torch.isfinite(loss)


def test_random_mask_batchwise_and_per_rank(monkeypatch):
    model = _tiny_model()
    x = torch.zeros(4, 3, 224, 224)
    mask = model.random_mask(x)
    assert mask.shape == (7, 7) and mask.dtype == torch.bool
    assert int((~mask).sum()) == int(49 * 0.25)  # MAE's rounding
    masks = []
    for rank in range(2):
        monkeypatch.setattr(green_mim, 'get_dist_info', lambda r=rank: (r, 2))
        torch.manual_seed(0)  # ranks share a seed
        masks.append(model.random_mask(x))
    assert not torch.equal(masks[0], masks[1])


@torch.no_grad()
def test_decoder_puts_every_visible_token_at_its_own_unit():
    """Decoder reduced to its token placement: identity embedding and
    prediction, no blocks / norm / positions, zero mask token. Visible token
    k carries a one-hot code of the unit it came from (listed by a plain
    loop); the output at every unit must carry that unit's own code."""
    h = w = 4
    dec = GreenMIMDecoder(num_patches=h * w, patch_size=4, embed_dim=h * w,
                          decoder_embed_dim=h * w, decoder_depth=0,
                          predict_feature_dim=h * w)
    for lin in (dec.decoder_embed, dec.decoder_pred):
        lin.weight.copy_(torch.eye(h * w))
        lin.bias.zero_()
    setattr(dec, dec.decoder_norm_name, nn.Identity())
    dec.decoder_pos_embed.zero_()
    dec.mask_token.zero_()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        mask = torch.rand(h, w, generator=gen) < 0.6
        mask[1, 2] = False
        units = [r * w + c for r in range(h) for c in range(w)
                 if not mask[r, c]]
        x = F.one_hot(torch.tensor(units), h * w).float()[None]  # 1, N, L
        out = dec(x, mask)[0]  # L, L
        expected = torch.diag((~mask).flatten().float())
        assert torch.equal(out, expected)


def test_loss_only_on_masked_units(monkeypatch):
    """Only the masked units are predicted and scored: the prediction has
    one row per masked unit, and changing a masked unit's pixels (which the
    encoder never sees) changes the loss, not the prediction."""
    torch.manual_seed(0)
    model = _tiny_model()
    x = torch.randn(2, 3, 128, 128)
    mask = model.random_mask(x)  # 4x4 units of 32 px
    monkeypatch.setattr(model, 'random_mask', lambda inputs: mask)
    kept = []
    decode = model.neck.forward
    monkeypatch.setattr(model.neck, 'forward',
                        lambda *a, **k: kept.append(decode(*a, **k)) or
                        kept[-1])
    base = model.loss(x, _samples(2))['loss']
    assert kept[0].shape == (2, int(mask.sum()), 32 * 32 * 3)
    r, c = mask.nonzero()[0].tolist()
    y = x.clone()
    y[..., 32 * r:32 * r + 32, 32 * c:32 * c + 32] += torch.randn(3, 32, 32)
    changed = model.loss(y, _samples(2))['loss']
    torch.testing.assert_close(kept[1], kept[0])
    assert not torch.allclose(changed, base)


def test_overfit_one_batch_and_load_into_mmpretrain_swin(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model(arch=NANO, decoder_dims=32)
    imgs = F.interpolate(torch.randn(2, 3, 8, 8), size=128, mode='bilinear')
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def one_batch():  # same images, same mask
        torch.manual_seed(1)
        return model.loss(imgs, _samples(2))['loss']

    losses = fit(opt, one_batch, 60)
    assert sum(losses[-5:]) / 5 < 0.35 * sum(losses[:5]) / 5, losses

    path = str(tmp_path / 'greenmim.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    state = torch.load(path)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    ln = dict(type='LN', eps=1e-6)  # the config's eps, as in fine-tuning
    swin = SwinTransformer(
        arch=NANO, img_size=128, window_size=4, norm_cfg=ln,
        patch_cfg=dict(norm_cfg=ln),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln),
                        downsample_cfg=dict(norm_cfg=ln)))
    swin.load_state_dict(backbone, strict=True)
    model.eval()
    swin.eval()
    with torch.no_grad():  # same modules, same dense forward
        torch.testing.assert_close(swin(imgs)[-1], model.backbone(imgs)[-1])


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match=r'mask_ratio must be in \(0, 1\)'):
        _tiny_model(mask_ratio=1.0)
    with pytest.raises(ValueError, match='mask_ratio'):
        _tiny_model(mask_ratio=-0.1)
    with pytest.raises(ValueError, match='total stride'):
        _tiny_model(mask_unit=16)
    model = _tiny_model()
    with pytest.raises(ValueError, match='divisible by the mask unit'):
        model.loss(torch.randn(1, 3, 200, 200), _samples(1))
    # the decoder built for 4x4 units computes its positions for 8x8
    assert torch.isfinite(model.loss(torch.randn(1, 3, 256, 256),
                                     _samples(1))['loss'])


@pytest.mark.slow
def test_runner_pretrains_and_checkpoint_loads_into_swin(tmp_path):
    """The Swin-B recipe (shrunk) through mmengine's Runner on a tiny image
    folder; the saved checkpoint initialises mmpretrain's SwinTransformer
    with the usual ``prefix='backbone.'`` and loads strictly."""
    from mmengine.runner import CheckpointLoader, Runner

    from _tiny_runs import make_image_folder
    data = make_image_folder(str(tmp_path / 'data'), per_class=2, size=256)
    cfg = Config.fromfile(CFG_B)
    cfg.model.backbone.arch = TINY
    cfg.model.neck.update(embed_dim=256, decoder_embed_dim=64,
                          decoder_num_heads=2)
    cfg.train_dataloader.update(batch_size=2, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset = dict(
        type='mmpretrain.CustomDataset', data_root=data, with_label=False,
        pipeline=cfg.train_pipeline)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU
    cfg.optim_wrapper.pop('loss_scale')
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.logger.interval = 1
    cfg.launcher = 'none'
    Runner.from_cfg(cfg).train()

    ckpt = str(tmp_path / 'work' / 'epoch_2.pth')
    state = CheckpointLoader.load_checkpoint(ckpt)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    swin = SwinTransformer(arch=TINY, img_size=224, window_size=7)
    swin.load_state_dict(backbone, strict=True)
    swin2 = SwinTransformer(
        arch=TINY, img_size=224, window_size=7,
        init_cfg=dict(type='Pretrained', checkpoint=ckpt, prefix='backbone.'))
    swin2.init_weights()
    for k, v in swin2.state_dict().items():
        torch.testing.assert_close(v, swin.state_dict()[k])


def test_predicting_only_masked_units_changes_nothing(monkeypatch):
    """The loss reads the masked units only, so the decoder's last block runs
    just their queries: loss and gradients equal the full decoder's (every
    unit predicted, loss masked as in MAE)."""
    torch.manual_seed(0)
    model = _tiny_model()
    x = torch.randn(2, 3, 128, 128)
    mask = model.random_mask(x)
    monkeypatch.setattr(model, 'random_mask', lambda inputs: mask)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()
                if p.grad is not None}

    new = model.loss(x, _samples(2))['loss']
    g_new = grads(new)
    full = model.neck(model.backbone(x, mask)[-1], mask)  # B, L, ...
    old = model.head.loss(full, x, mask.flatten().expand(2, -1).float())
    g_old = grads(old)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    assert g_new.keys() == g_old.keys()
    for n in g_old:
        torch.testing.assert_close(g_new[n], g_old[n], rtol=1e-4, atol=1e-6,
                                   msg=n)


def test_step_reads_no_device_data():
    """The step reads no device data: the batch-wise mask is drawn,
    checked and planned (optimal grouping, indices) on the host and the
    plan moves in one copy, so the step runs with the model and images on
    the ``meta`` device, whose tensors have no data to read back (the copies
    are counted in tests/test_green_mim_sync.py)."""
    torch.manual_seed(0)
    model = _tiny_model().to('meta')
    loss = model.loss(torch.randn(2, 3, 128, 128, device='meta'),
                      _samples(2))['loss']
    assert loss.device.type == 'meta'
    loss.backward()
