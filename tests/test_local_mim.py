import numpy as np
import pytest
import torch

import mmum  # noqa: F401
from mmum.models.heads.hog_target import HOGTarget
from mmum.models.necks.local_mim_decoder import LocalMIMDecoder
from mmum.registry import MODELS


pytestmark = pytest.mark.usefixtures('one_thread')


TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2,
                 feedforward_channels=64)


def tiny_local_mim(**backbone):
    """32² images, 8 px patches (4x4 grid), decoders on all 4 blocks with
    targets at 16², 8², 4², 2² -- the ViT-B/16 224² layout scaled down."""
    torch.manual_seed(0)
    model = MODELS.build(
        dict(
            type='mmum.LocalMIM',
            data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor',
                                   mean=[0, 0, 0], std=[1, 1, 1]),
            backbone=dict(type='mmum.LocalMIMViT', arch=TINY_ARCH, img_size=32,
                          patch_size=8, out_indices=(0, 1, 2, 3),
                          **backbone),
            neck=dict(type='mmum.LocalMIMDecoder', embed_dims=16, num_heads=2),
            head=dict(type='mmpretrain.MIMHead',
                      loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                criterion='L2')),
            target_generator=dict(type='mmum.HOGTarget', cell_sizes=(2, 4, 8,
                                                                16))))
    model.init_weights()
    return model


def numpy_hog(img, cell, nbins=9):
    """Independent reference written from the released conventions: per
    pixel of a (3, H, W) array, in float64, each cell size on its own.
    Sobel with reflected border (gx = left - right, gy = top - bottom,
    weights 1, 2, 1), angle atan2(gx, gy) from the y-axis, hard bin =
    integer part of angle / pi * nbins wrapped into [0, nbins), magnitude
    summed per (channel, bin, cell), L2 per (channel, cell)."""
    img = np.asarray(img, dtype=np.float64)
    C, H, W = img.shape
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode='reflect')
    w = np.array([1., 2., 1.])
    out = np.zeros((C, nbins, H // cell, W // cell))
    ys, xs = np.mgrid[0:H, 0:W]
    for c in range(C):
        # 3x3 window of every pixel: win[y, x, i, j] = p[c, y + i, x + j]
        win = np.lib.stride_tricks.sliding_window_view(p[c], (3, 3))
        gx = (win[..., :, 0] - win[..., :, 2]) @ w
        gy = (win[..., 0, :] - win[..., 2, :]) @ w
        bins = np.floor(np.arctan2(gx, gy) / np.pi * nbins).astype(
            np.int64) % nbins
        np.add.at(out[c], (bins, ys // cell, xs // cell), np.hypot(gx, gy))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).reshape(C * nbins, H // cell,
                                                    W // cell), norm[:, 0]


def photo(size=224, normalise=True):
    """A real photo (skimage's astronaut, centre crop), by default as the
    model gets it: through the ImageNet mean / std data preprocessor of the
    configs; else its integer RGB values as floats."""
    from mmpretrain.models import SelfSupDataPreprocessor
    from skimage import data
    img = torch.from_numpy(data.astronaut()[144:144 + size,
                                            144:144 + size].copy())
    img = img.permute(2, 0, 1)[None]  # (1, 3, H, W) RGB
    if not normalise:
        return img.float()
    prep = SelfSupDataPreprocessor(mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], to_rgb=True)
    bgr = img[:, [2, 1, 0]]  # as loaded by mmcv
    return prep(dict(inputs=bgr, data_samples=None))['inputs']


def test_hog_matches_numpy_reference_on_a_photo():
    """<= 1e-5 at every scale of ViT-B's 224² layout (56², 28², 14², 7²)
    on the normalised photo; cells without any gradient are left out."""
    img = photo()  # (1, 3, 224, 224), normalised
    hog = HOGTarget()
    targets = hog(img)
    assert [tuple(t.shape) for t in targets] == [(1, 27, 56, 56),
                                                 (1, 27, 28, 28),
                                                 (1, 27, 14, 14),
                                                 (1, 27, 7, 7)]
    for t, cell in zip(targets, hog.cell_sizes):
        ref, norm = numpy_hog(img[0].numpy(), cell)
        keep = np.repeat(norm > 0, 9, axis=0)  # (27, h, w)
        assert keep.mean() > 0.9
        err = np.abs(t[0].numpy() - ref)[keep].max()
        assert err <= 1e-5, (cell, err)


@pytest.mark.parametrize('edge,bin_', [('vertical', 4), ('horizontal', 0),
                                       ('diagonal', 2)])
def test_hog_synthetic_edges(edge, bin_):
    """A vertical edge (intensity changing along x) lands in bin 4, a
    horizontal one (changing along y) in bin 0, a diagonal one in bin 2,
    in every colour channel that carries it; the flat channel has none."""
    y, x = torch.meshgrid(torch.arange(32.), torch.arange(32.),
                          indexing='ij')
    step = dict(vertical=x >= 13, horizontal=y >= 13,
                diagonal=x + y >= 29)[edge].float()
    img = torch.stack([step, torch.full_like(step, .3), -2 * step])[None]
    for t in HOGTarget(cell_sizes=(4, 8, 16, 32))(img):
        t = t[0].unflatten(0, (3, 9))  # (channel, bin, h, w)
        assert not t[1].any()  # the flat channel
        # cells off the image border: the reflected border bends a
        # diagonal edge there (its border pixels see a vertical one)
        n = t.shape[-1]
        inner = torch.zeros(n, n, dtype=torch.bool)
        inner[1:-1, 1:-1] = True
        for c in (0, 2):
            hit = t[c].sum(0) > 0  # cells the edge passes through
            assert hit.any() and (inner & hit).any() == (n > 2)
            assert (t[c].argmax(0)[hit] == bin_).all()
            one_hot = hit & inner if edge == 'diagonal' else hit
            torch.testing.assert_close(t[c, bin_][one_hot],
                                       torch.ones(int(one_hot.sum())))
            assert not t[c][:, ~hit].any()
    # the opposite edge (dark to bright the other way) shares the bin
    flipped = HOGTarget(cell_sizes=(8, ))(-img)[0]
    torch.testing.assert_close(
        flipped, HOGTarget(cell_sizes=(8, ))(img)[0])


def test_hog_is_mmpretrain_maskfeat_hog():
    """mmpretrain's MaskFeat HOGGenerator with no Gaussian window has the
    same conventions: equal targets where its output can express them."""
    from mmpretrain.models import HOGGenerator

    # integer pixel values: its float32 Sobel is then exact too (on real
    # values float32 leaves +-1e-7 where a gradient is 0, which moves such
    # pixels between bins 0 and 8 -- the reason ours is taken in float64)
    img = photo(normalise=False)
    ours = HOGTarget(cell_sizes=(4, 16))(img)
    theirs = HOGGenerator(nbins=9, pool=16, gaussian_window=0)(img)
    # 16-px cells on 224²: its (B, 14 * 14, 27) is our 14² map row-major
    torch.testing.assert_close(ours[1].flatten(2).transpose(1, 2), theirs,
                               atol=1e-5, rtol=0)
    gen = HOGGenerator(nbins=9, pool=4, gaussian_window=0)
    gen(img)  # regrouped per 16-px patch; its (B, 3, 9, 56, 56) is kept
    torch.testing.assert_close(ours[0], gen.out.flatten(1, 2), atol=1e-5,
                               rtol=0)


def test_hog_target_is_taken_on_the_normalised_input():
    """LocalMIM computes the HOG of the image after the data preprocessor
    (mean / std, BGR -> RGB), as the released code does."""
    model = tiny_local_mim()
    model.data_preprocessor = MODELS.build(
        dict(type='mmpretrain.SelfSupDataPreprocessor', mean=[1., 2., 3.],
             std=[2., 4., 8.], to_rgb=True))
    seen = []
    model.target_generator.register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    raw = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    data = model.data_preprocessor(dict(inputs=raw[None], data_samples=None),
                                   True)
    model(**data, mode='loss')
    expected = (raw[[2, 1, 0]].float() - torch.tensor([1., 2., 3.])[:, None,
                                                                     None]
                ) / torch.tensor([2., 4., 8.])[:, None, None]
    torch.testing.assert_close(seen[0][0], expected)


def test_hog_unit_norm():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 16, 16)
    targets = HOGTarget(cell_sizes=(4, 8, 16))(img)
    assert [t.shape for t in targets] == [(2, 27, 4, 4), (2, 27, 2, 2),
                                          (2, 27, 1, 1)]
    # every (channel, cell) histogram has unit L2 norm
    norms = targets[0].unflatten(1, (3, 9)).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_hog_bad_input():
    with pytest.raises(ValueError, match='multiples'):
        HOGTarget(cell_sizes=(4, 6))
    with pytest.raises(ValueError, match='multiples of 32'):
        HOGTarget()(torch.rand(1, 3, 48, 48))


# trainable parameters of the released ViT-B decoder of each scale with its
# input LayerNorm (768 -> 256-d block -> head -> 27 HOG channels): the
# shared part is 1536 (input LN) + 196864 (embed) + 256 (mask token) +
# 789760 (block) + 512 (norm) = 988928; heads: 56²: ConvT 256->128 (131200)
# + LN (256) + ConvT 128->64 (32832) + 1x1 conv (1755); 28²: ConvT (131200)
# + 1x1 (3483); 14² and 7² (average pooling): 1x1 (6939)
RELEASED_VIT_B_DECODER_PARAMS = {56: 1154971, 28: 1123611, 14: 995867,
                                 7: 995867}


@pytest.mark.parametrize('out_size', [56, 28, 14, 7])
def test_decoder_heads_as_released(out_size):
    dec = LocalMIMDecoder(in_channels=768, grid=14, out_size=out_size,
                          out_channels=27)
    ids_restore = torch.rand(2, 196).argsort(dim=1)
    x = torch.rand(2, 1 + 49, 768)  # cls + 25% visible tokens
    assert dec(x, ids_restore).shape == (2, out_size**2, 27)
    assert sum(p.numel() for p in dec.parameters()
               ) == RELEASED_VIT_B_DECODER_PARAMS[out_size]
    head = {56: ['ConvTranspose2d', 'LayerNorm2d', 'GELU', 'ConvTranspose2d'],
            28: ['ConvTranspose2d'], 14: [], 7: ['AvgPool2d']}[out_size]
    assert [type(m).__name__ for m in dec.resize] == head
    assert dec.pred.in_channels == {56: 64, 28: 128}.get(out_size, 256)
    assert dec.norm_in.eps == dec.norm.eps == 1e-6
    if out_size == 56:
        assert dec.resize[1].eps == 1e-6


def test_released_positions():
    """The decoder's fixed positions are MAE's / the released table: the
    first half encodes the column, the second the row (the transpose of
    mmpretrain's ``build_2d_sincos_position_embedding``)."""
    from mmpretrain.models.utils import build_2d_sincos_position_embedding

    from mmum.models.necks.local_mim_decoder import released_sincos
    pos = released_sincos((4, 4), 16)[0]  # (1 + 16, 16)
    assert not pos[0].any()
    grid = pos[1:].view(4, 4, 16)  # (row, col, D)
    col = torch.arange(4.)[:, None] / 10000**(torch.arange(4.) / 4)
    torch.testing.assert_close(grid[2, :, :4], torch.sin(col))
    torch.testing.assert_close(grid[:, 1, 12:], torch.cos(col))
    mmp = build_2d_sincos_position_embedding(4, 16, cls_token=True)[0]
    torch.testing.assert_close(
        mmp[1:].view(4, 4, 16).transpose(0, 1), grid)
    model = tiny_local_mim()
    torch.testing.assert_close(model.backbone.pos_embed,
                               released_sincos((4, 4), 32))


def test_decoder_bad_scale():
    with pytest.raises(ValueError, match='out_size'):
        LocalMIMDecoder(in_channels=32, grid=14, out_size=20,
                        out_channels=27)


def test_vit_b_layout():
    """ViT-B/16: decoders on blocks 2, 4, 10, 12 -> 56², 28², 14², 7²."""
    model = MODELS.build(
        dict(type='mmum.LocalMIM',
             data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor'),
             backbone=dict(type='mmum.LocalMIMViT', arch='b'),
             neck=dict(type='mmum.LocalMIMDecoder'),
             head=dict(type='mmpretrain.MIMHead',
                       loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                 criterion='L2')),
             target_generator=dict(type='mmum.HOGTarget')))
    assert model.decoder_layers == (2, 4, 10, 12)
    assert [len(d.resize) for d in model.neck] == [4, 1, 0, 1]
    assert model.neck[0].block.attn.num_heads == 8
    assert model.neck[0].embed.out_features == 256
    assert model.backbone.mask_ratio == 0.75
    assert model.get_layer_depth('backbone.layers.1.ffn.layers.0.0.weight'
                                 )[0] == 2


def test_loss_and_masked_regions():
    model = tiny_local_mim()
    img = torch.rand(2, 3, 32, 32)
    losses = model.loss(img, None)
    assert sorted(losses) == ['loss_16x16', 'loss_2x2', 'loss_4x4',
                              'loss_8x8']
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.neck[0].pred.weight.grad is not None
    # 75% masking: 4 of 16 patches visible (+ class token)
    feats, mask, _ = model.backbone(img)
    assert feats[0].shape == (2, 5, 32) and mask.sum(1).tolist() == [12, 12]


def test_only_masked_regions_count():
    model = tiny_local_mim()
    img = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    feats, mask, ids = model.backbone(img)
    target = model.target_generator(img, [8])[0]  # (2, 27, 4, 4) = grid
    pred = model.neck[2](feats[2], ids)
    target = target.flatten(2).transpose(1, 2)
    loss = model.head.loss(pred, target, mask)
    moved = pred + 5 * (1 - mask)[..., None]  # change visible cells only
    torch.testing.assert_close(model.head.loss(moved, target, mask), loss)


def reachable_params(loss):
    """Parameters whose AccumulateGrad node the backward graph reaches."""
    seen, stack, params = set(), [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, 'variable'):
            params.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    return params, len(seen)


def test_frozen_prefix_leaves_the_graph():
    model = tiny_local_mim()
    img = torch.rand(2, 3, 32, 32)
    full, n_full = reachable_params(sum(model.loss(img, None).values()))
    bb = model.backbone
    assert id(bb.cls_token) in full  # the check below can see the prefix
    # freeze layers 0 (patch embed + cls token) and 1 (block 1)
    frozen = [p for params in bb.layer_params()[:2] for p in params]
    for p in frozen:
        p.requires_grad_(False)
    assert bb.num_frozen_layers() == 2
    fired = []
    for m in [bb.patch_embed, bb.layers[0]]:
        m.register_forward_hook(
            lambda m, i, o: fired.append(
                (o[0] if isinstance(o, tuple) else o).requires_grad))
    loss = sum(model.loss(img, None).values())
    reach, n_nodes = reachable_params(loss)
    assert fired == [False, False]  # ran without autograd
    assert not reach & {id(p) for p in frozen}
    assert id(bb.layers[1].attn.qkv.weight) in reach
    assert n_nodes < n_full
    loss.backward()
    assert all(p.grad is None for p in frozen)
    assert bb.layers[1].attn.qkv.weight.grad is not None


def test_frozen_prefix_same_values():
    """Freezing changes what autograd records, not the numbers."""
    model = tiny_local_mim()
    img = torch.rand(2, 3, 32, 32)
    torch.manual_seed(3)
    ref = model.loss(img, None)
    for params in model.backbone.layer_params()[:3]:
        for p in params:
            p.requires_grad_(False)
    torch.manual_seed(3)
    out = model.loss(img, None)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])


def test_mismatched_scales():
    with pytest.raises(ValueError, match='one scale per decoder'):
        MODELS.build(
            dict(type='mmum.LocalMIM',
                 data_preprocessor=dict(
                     type='mmpretrain.SelfSupDataPreprocessor'),
                 backbone=dict(type='mmum.LocalMIMViT', arch=TINY_ARCH,
                               img_size=32, patch_size=8, out_indices=(1, 3)),
                 neck=dict(type='mmum.LocalMIMDecoder'),
                 head=dict(type='mmpretrain.MIMHead',
                           loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                     criterion='L2')),
                 target_generator=dict(type='mmum.HOGTarget')))


def test_vitfreeze_configs():
    """configs/vitfreeze: the paper's settings, and ViT-B's layers as
    FreezeOutLR sees them through mmpretrain's optimizer constructor."""
    import os.path as osp

    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmum.registry import PARAM_SCHEDULERS
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(root, 'configs/vitfreeze/vit_b_100e.py'))
    base = Config.fromfile(
        osp.join(root, 'configs/vitfreeze/local_mim_vit_b_100e.py'))
    assert [h['type'] for h in base.custom_hooks] == [
        'mmum.NaNGuardHook'] and all(
        'FreezeOut' not in s['type'] for s in base.param_scheduler)
    assert [h['type'] for h in cfg.custom_hooks] == [
        'mmum.FreezeOutHook', 'mmum.DecoderPruningHook', 'mmum.NaNGuardHook'
    ]
    assert cfg.find_unused_parameters and cfg.train_cfg.max_epochs == 100
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate')
    assert cfg.default_scope == 'mmpretrain'
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(
            dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
    assert model.decoder_layers == (2, 4, 10, 12)
    optim_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')  # AMP: GPU
    optim_cfg.pop('loss_scale')
    optim = build_optim_wrapper(model, optim_cfg)
    sched_cfg = dict(cfg.param_scheduler[0])
    sched_cfg.pop('_scope_', None)
    sched = PARAM_SCHEDULERS.build(
        sched_cfg, default_args=dict(optimizer=optim, epoch_length=10))
    assert sched.num_layers == 13  # patch embedding + 12 blocks
    assert sched.t[0] == pytest.approx(0.512) and sched.t[12] == 1
    assert (sched.warmup, sched.total, sched.by_epoch) == (100, 1000, False)


def test_hog_subset_of_scales():
    """Asking only for coarse cells (fine decoders pruned) gives the same
    targets, computed from coarser histograms."""
    img = torch.rand(2, 3, 32, 32)
    hog = HOGTarget(cell_sizes=(4, 8, 16, 32))
    full = hog(img)
    for a, b in zip(hog(img, [16, 32]), full[2:]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='not all among'):
        hog(img, [2])


SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])


def tiny_um_local_mim():
    """UM-MAE Swin (compact 64² input of a 128² image), decoders on the 4
    stages with HOG targets at 32², 16², 8², 4² (16-px patch grid 8²)."""
    torch.manual_seed(0)
    model = MODELS.build(
        dict(
            type='mmum.UMLocalMIM',
            data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor'),
            backbone=dict(type='mmum.LocalMIMSwin', arch=SWIN_TINY,
                          img_size=64, window_size=8,
                          out_indices=(0, 1, 2, 3)),
            neck=dict(type='mmum.LocalMIMCompactDecoder', embed_dims=16,
                      num_heads=2),
            head=dict(type='mmpretrain.MIMHead',
                      loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                criterion='L2')),
            target_generator=dict(type='mmum.HOGTarget')))
    model.init_weights()
    return model


def um_batch(n=2, size=128, seed=0):
    import numpy as np
    from mmpretrain.structures import DataSample

    from mmum.datasets.transforms import UniformMasking
    np.random.seed(seed)
    samples = []
    for _ in range(n):
        r = UniformMasking().transform(dict(img=np.zeros((size, size, 3))))
        ds = DataSample()
        ds.set_mask(torch.from_numpy(r['mask']))
        ds.set_field(torch.from_numpy(r['secondary_mask']), 'secondary_mask')
        samples.append(ds)
    return torch.rand(n, 3, size, size), samples


def test_um_local_mim_swin():
    model = tiny_um_local_mim()
    assert model.decoder_layers == (2, 4, 6, 8)  # last block of each stage
    assert [d.unit_ratio for d in model.neck] == [4, 2, 1, 0.5]
    img, samples = um_batch()
    losses = model.loss(img, samples)
    assert sorted(losses) == ['loss_16x16', 'loss_32x32', 'loss_4x4',
                              'loss_8x8']
    sum(losses.values()).backward()
    assert all(d.pred.weight.grad is not None for d in model.neck)
    bb = model.backbone
    assert bb.get_layer_depth('backbone.mask_token', 'backbone.')[0] == 0
    assert model.get_layer_depth(
        'backbone.stages.0.downsample.reduction.weight')[0] == 2


def test_um_local_mim_swin_frozen_prefix():
    model = tiny_um_local_mim()
    img, samples = um_batch()
    bb = model.backbone
    frozen = [p for params in bb.layer_params()[:3] for p in params]
    assert any(p is bb.mask_token for p in frozen)
    # through FreezeOutLR and DecoderPruningHook, with layers from
    # get_layer_depth via mmpretrain's constructor
    from types import SimpleNamespace

    from mmengine.logging import MMLogger
    from mmpretrain.engine.optimizers import \
        LearningRateDecayOptimWrapperConstructor

    from mmum.engine.hooks import DecoderPruningHook
    from mmum.engine.schedulers.freezeout import FreezeOutLR
    optim = LearningRateDecayOptimWrapperConstructor(
        dict(type='OptimWrapper',
             optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=1.0))(model)
    sched = FreezeOutLR(optim, end=100, by_epoch=False)
    assert sched.num_layers == 9  # patch embedding + 8 blocks
    sched.freeze_layers([0, 1, 2])
    assert bb.num_frozen_layers() == 3
    DecoderPruningHook().after_train_iter(
        SimpleNamespace(model=model, optim_wrapper=optim,
                        logger=MMLogger.get_current_instance()), 0)
    assert model.pruned_decoders == {0}
    fired = []
    # (the patch embedding's last module: UM-MAE's Swin puts the mask token
    # between its projection and its norm)
    for m in [bb.patch_embed.norm, bb.stages[0].blocks[1],
              bb.stages[0].downsample]:
        m.register_forward_hook(
            lambda m, i, o: fired.append(
                (o[0] if isinstance(o, tuple) else o).requires_grad))
    losses = model.loss(img, samples)
    assert 'loss_32x32' not in losses
    reach, _ = reachable_params(sum(losses.values()))
    assert fired == [False, False, False]
    assert not reach & {id(p) for p in frozen}
    assert id(bb.stages[1].blocks[0].ffn.layers[0][0].weight) in reach


def test_local_mim_swin_equals_um_swin():
    """The freezing-aware forward computes what UM-MAE's Swin computes."""
    from mmum.models.backbones.um_swin import UMSwinTransformer
    model = tiny_um_local_mim()
    img, samples = um_batch()
    mask, index, secondary = model.masks(img, samples)
    x = model.compact(img, index)
    model.eval()
    for a, b in zip(model.backbone(x, secondary),
                    UMSwinTransformer.forward(model.backbone, x, secondary)):
        torch.testing.assert_close(a, b)


def test_swin_config_builds_and_runs():
    """configs/vitfreeze/swin_t_100e.py: Swin-T, 13 freezable layers, one
    loss step on a uniformly masked 256² batch."""
    import os.path as osp

    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmum.registry import PARAM_SCHEDULERS
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(root, 'configs/vitfreeze/swin_t_100e.py'))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(
            dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
    assert model.decoder_layers == (2, 4, 10, 12)
    optim_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')  # AMP: GPU
    optim_cfg.pop('loss_scale')
    optim = build_optim_wrapper(model, optim_cfg)
    sched_cfg = dict(cfg.param_scheduler[0])
    sched_cfg.pop('_scope_', None)
    sched = PARAM_SCHEDULERS.build(
        sched_cfg, default_args=dict(optimizer=optim, epoch_length=10))
    assert sched.num_layers == 13  # patch embedding + 2 + 2 + 6 + 2 blocks
    img, samples = um_batch(n=1, size=256)
    losses = model.loss(img, samples)
    assert sorted(losses) == ['loss_16x16', 'loss_32x32', 'loss_64x64',
                              'loss_8x8']


def test_compact_decoder_at_another_grid_keeps_released_positions():
    """Built for a 4x4 patch grid and run at 8x8, the compact decoder equals
    one built for 8x8 (same released sin-cos order at every grid)."""
    from mmum.models.necks.local_mim_decoder import LocalMIMCompactDecoder
    torch.manual_seed(0)
    small, big = [
        LocalMIMCompactDecoder(in_channels=8, unit_ratio=1, grid=g,
                               out_size=2 * g, out_channels=27,
                               embed_dims=16, num_heads=2) for g in (4, 8)
    ]
    big.load_state_dict(small.state_dict())
    x = torch.randn(2, 8, 4, 4)  # one visible patch per 2x2 cell of 8x8
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4),
                                indexing='ij')
    index = ((2 * rows + torch.randint(0, 2, (2, 4, 4))) * 8 + 2 * cols +
             torch.randint(0, 2, (2, 4, 4))).flatten(1)
    torch.testing.assert_close(small(x, index), big(x, index))
