"""Sampling strategies of the ViT pilot (paper §4.1, Fig. 4, Table 1)."""
import copy

import pytest
import torch
from mmengine.config import Config

import mmum  # noqa: F401
from mmum.models.backbones import UMViT
from mmum.registry import MODELS

TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def vit(sampling, **kwargs):
    model = UMViT(arch=TINY, img_size=64, patch_size=8, sampling=sampling,
                  **kwargs)
    model.init_weights()
    return model


def cells(ids_keep, h=8, w=8):
    """Row-major cell index of each kept patch."""
    r, c = ids_keep // w, ids_keep % w
    return (r // 2) * (w // 2) + c // 2


@pytest.mark.parametrize('sampling', ['RS', 'GS', 'US', 'UM'])
def test_every_strategy_keeps_a_quarter(sampling):
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = vit(sampling).sample(3, (8, 8), 'cpu')
    assert ids_keep.shape == (3, 16)
    assert mask.sum(1).tolist() == [48.] * 3
    # the kept patches are the unmasked ones and ids_restore undoes
    # [kept, dropped] as MAE's decoder expects
    assert (mask.gather(1, ids_keep) == 0).all()
    ids_shuffle = ids_restore.argsort(1)
    assert torch.equal(ids_shuffle[:, :16], ids_keep)
    assert (mask.gather(1, ids_shuffle[:, 16:]) == 1).all()
    one_per_cell = all(
        sorted(cells(k).tolist()) == list(range(16)) for k in ids_keep)
    if sampling == 'RS':
        assert not one_per_cell  # (with this seed) RS ignores the cells
    else:
        assert one_per_cell
    if sampling == 'GS':  # always the top-left patch of every cell
        want = torch.tensor([r * 8 + c for r in range(0, 8, 2)
                             for c in range(0, 8, 2)])
        assert (ids_keep == want).all()


def test_us_positions_vary():
    torch.manual_seed(0)
    ids, _, _ = vit('US').sample(4, (8, 8), 'cpu')
    assert len({tuple(i.tolist()) for i in ids}) == 4


@pytest.mark.parametrize('ratio,k', [(0.15, 3), (0.25, 4), (0.35, 6)])
def test_um_secondary_tokens(ratio, k):
    torch.manual_seed(0)
    model = vit('UM', secondary_ratio=ratio)
    seen = []
    model.layers[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    latent, mask, ids_restore = model(torch.randn(2, 3, 64, 64))
    assert latent.shape == (2, 17, 32)
    tokens = seen[0][:, 1:]  # drop the class token
    # ids of the kept patches, from ids_restore
    ids_keep = ids_restore.argsort(1)[:, :16]
    pos = model.pos_embed[0, 1:][ids_keep]  # B, 16, C
    is_token = torch.isclose(tokens, model.mask_token + pos,
                             atol=1e-6).all(-1)
    assert is_token.sum(1).tolist() == [k, k]


@pytest.mark.parametrize('sampling', ['RS', 'GS', 'US', 'UM'])
def test_mae_loss_runs(sampling):
    cfg = copy.deepcopy(Config.fromfile('configs/um_mae/vit_b_200e.py').model)
    cfg.backbone.update(arch=TINY, img_size=64, patch_size=8,
                        sampling=sampling)
    cfg.neck.update(embed_dim=32, patch_size=8, num_patches=64,
                    decoder_embed_dim=32, decoder_depth=1,
                    decoder_num_heads=2)
    cfg.head.patch_size = 8
    model = MODELS.build(cfg)
    model.init_weights()
    loss = model.loss(torch.randn(2, 3, 64, 64), [None, None])['loss']
    assert torch.isfinite(loss)
    loss.backward()
    if sampling == 'UM':
        assert model.backbone.mask_token.grad.abs().sum() > 0


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match=r"one of \('RS', 'GS', 'US', 'UM'\)"
                       r".*'BS'"):
        vit('BS')
    with pytest.raises(ValueError, match='secondary_ratio'):
        vit('UM', secondary_ratio=1.5)
    with pytest.raises(ValueError, match='mask_ratio is 0.75'):
        vit('US', mask_ratio=0.6)
    with pytest.raises(ValueError, match='even patch grid'):
        UMViT(arch=TINY, img_size=56, patch_size=8, sampling='GS')(
            torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match=r'\(8, 8\) patch grid'):
        vit('UM')(torch.randn(1, 3, 32, 32))


def test_plain_forward_without_mask():
    out = vit('UM', out_type='avg_featmap')(torch.randn(1, 3, 64, 64), None)
    assert out[-1].shape == (1, 32)


@pytest.mark.slow
def test_real_config_builds():
    cfg = Config.fromfile('configs/um_mae/vit_b_200e.py')
    assert cfg.train_cfg.max_epochs == 200
    model = MODELS.build(cfg.model)
    assert model.backbone.sampling == 'UM'
    assert model.backbone.secondary_ratio == 0.25
    assert model.backbone.embed_dims == 768
