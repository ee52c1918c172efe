"""mmum.ReconstructionHook and the picture code it shares with
tools/analysis_tools/visualize_reconstruction.py."""
import os.path as osp

import numpy as np
import pytest
import torch

import mmum  # noqa: F401
from _tiny_runs import ROOT, make_imagenet_folder
from _watch import make_shapes_dataset, train


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp('shapes'),
                               train_per_class=4, val_per_class=2)


def png(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert('RGB'))


def test_png_after_interval_identical_across_runs(tmp_path, shapes):
    """UM-MAE, tiny Swin, 64 px, 3 val images, every 2 iterations: the PNG
    of iteration 2 and 4 exist with the expected size (4 columns of 64 px +
    3 gaps; 3 rows + 2 gaps + the 40-px title band), reach the Visualizer's
    local backend, change with training, and two runs with the same seed
    draw the same pixels."""
    pics = []
    for name in ('a', 'b'):
        work = tmp_path / name
        train(work, shapes, 'custom_hooks.0.interval=100')  # k-NN off
        folder = work / 'reconstructions'
        assert sorted(p.name for p in folder.iterdir()) == [
            'iter_000002.png', 'iter_000004.png']
        pics.append([png(folder / f'iter_00000{i}.png') for i in (2, 4)])
        assert list(work.glob('*/vis_data/vis_image/reconstruction_2.png'))
    (a2, a4), (b2, b4) = pics
    assert a2.shape == (3 * 64 + 2 * 4 + 40, 4 * 64 + 3 * 4, 3)
    assert np.array_equal(a2, b2) and np.array_equal(a4, b4)
    assert not np.array_equal(a2, a4)
    # the original and masked columns (same images, same masks) do not
    # change between intervals
    assert np.array_equal(a2[40:, :2 * 64 + 4], a4[40:, :2 * 64 + 4])


TINY_MAE = {  # configs/um_mae/vit_b_200e.py (mmpretrain MAE + UMViT), tiny
    'model.backbone.arch': dict(_delete_=True, embed_dims=32, num_layers=2,
                                num_heads=2, feedforward_channels=64),
    'model.backbone.img_size': 64, 'model.neck.num_patches': 16,
    'model.neck.embed_dim': 32, 'model.neck.decoder_embed_dim': 16,
    'model.neck.decoder_depth': 1, 'model.neck.decoder_num_heads': 2,
}


def build(cfg_path, **options):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmum.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    cfg.merge_from_dict(options)
    if 'data_preprocessor' not in cfg.model and cfg.get('data_preprocessor'):
        cfg.model.data_preprocessor = cfg.data_preprocessor
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        m = MODELS.build(cfg.model)
    m.init_weights()
    return m, cfg


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    root = make_imagenet_folder(str(tmp_path_factory.mktemp('photos')),
                                num=2, size=160)
    return [osp.join(root, 'train', f'{i}.png') for i in range(2)]


@pytest.mark.parametrize('cfg, options, size, columns', [
    ('tests/configs/rel_green_mim.py', {}, 128, 4),
    ('tests/configs/tiny_vitfreeze.py', {}, 64, 5),
    ('configs/um_mae/vit_b_200e.py', TINY_MAE, 64, 4),
])
def test_green_mim_mae_and_local_mim_pictures(cfg, options, size, columns,
                                              photos):
    """GreenMIM and mmpretrain's MAE (UM-MAE's ViT pilot) draw pixels,
    LocalMIM (ViT) the HOG at 16-px cells; all with fixed masks (the same
    picture twice), the caller's RNG states and every module's mode are
    kept."""
    from mmum.visualization.reconstruction import (figure, load_images,
                                                   model_image_size,
                                                   model_kind, reconstruct)
    model, _ = build(cfg, **options)
    model.train()
    kind = model_kind(model)
    assert model_image_size(model) == size
    items = load_images(photos, size, kind)
    state = torch.get_rng_state()
    first = reconstruct(model, items, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and model.backbone.training
    again = reconstruct(model, items, seed=3)
    grid, grid2 = figure(first), figure(again)
    assert np.array_equal(grid, grid2)
    assert grid.shape == (2 * size + 4, columns * size + (columns - 1) * 4,
                          3)
    assert first['masks'].float().mean() == pytest.approx(0.75)
    if kind in ('green_mim', 'mae'):
        assert first['recon'].shape == first['inputs'].shape
    else:
        assert first['cell'] == 16 and first['pred'].shape == (2, 27, 4, 4)
    other = reconstruct(model, items, seed=4)
    assert not torch.equal(other['masks'], first['masks'])


def test_hog_picture_draws_lines_along_edges():
    """An image that brightens towards the bottom right (I = x + y) has
    edges (iso-lines) from bottom-left to top-right: the picture of its HOG
    (mmum.HOGTarget) has its bright line on the cell's anti-diagonal."""
    from mmum.models.heads.hog_target import HOGTarget
    from mmum.visualization.reconstruction import hog_image
    yy, xx = torch.meshgrid(torch.arange(32.), torch.arange(32.),
                            indexing='ij')
    img = (xx + yy).expand(1, 3, 32, 32) * 3
    hog = HOGTarget(cell_sizes=(16, ))(img)[0][0]  # 27, 2, 2
    pic = hog_image(hog, 16)[16:, 16:, 0].astype(float)  # one inner cell
    anti = np.mean([pic[i, 15 - i] for i in range(16)])
    diag = np.mean([pic[i, i] for i in range(16)])
    assert pic.shape == (16, 16) and anti > 100 and diag < 50
    # I = x: vertical edges (HOG bin 4) -> a vertical line; I = y:
    # horizontal edges (bin 0, drawn at its centre, 10 degrees off)
    for grad, line, across in ((xx, pic_col, pic_row),
                               (yy, pic_row, pic_col)):
        hog = HOGTarget(cell_sizes=(16, ))(grad.expand(1, 3, 32, 32))[0][0]
        pic = hog_image(hog, 16)[16:, 16:, 0].astype(float)
        assert line(pic) > 2.5 * across(pic), (line(pic), across(pic))


def pic_col(pic):
    """Mean brightness of the cell's four centre columns."""
    return pic[:, 6:10].mean()


def pic_row(pic):
    return pic[6:10].mean()


def test_tool_draws_green_mim(tmp_path, photos):
    """visualize_reconstruction.py takes any supported model (here a tiny
    GreenMIM checkpoint), through the same code."""
    from _tiny_runs import python, run_tool
    model, _ = build('tests/configs/rel_green_mim.py')
    ckpt = tmp_path / 'm.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'r.png'
    run_tool([python(), 'tools/analysis_tools/visualize_reconstruction.py',
              'tests/configs/rel_green_mim.py', str(ckpt), *photos, '--out',
              str(out)], env={'PYTHONPATH': osp.join(ROOT, 'tests'),
                              'OMP_NUM_THREADS': '1'})
    assert png(out).shape == (2 * 128 + 4 + 40, 4 * 128 + 12, 3)


def test_bad_arguments(tmp_path):
    from mmum.engine.hooks import ReconstructionHook
    with pytest.raises(ValueError, match='either `images`'):
        ReconstructionHook()
    with pytest.raises(FileNotFoundError, match='no such image'):
        ReconstructionHook(images=[str(tmp_path / 'x.png')])
    with pytest.raises(ValueError, match='interval must be a positive'):
        ReconstructionHook(images=[__file__], interval=0)
