"""Intermediate ImageNet fine-tuning (UM-MAE §4.3, Table 8): a few Runner
iterations of the real configs from a short UM-MAE pre-training run, with
layer-wise lr decay following the decay rate layer by layer."""
import pytest
import torch

from transfer_data import (PVT_TINY, SWIN_TINY, cache_root, intermediate,
                           pretrain)


def expected_depth(arch, name):
    """Our own statement of the layer ids (not the backbone's method):
    stem 0, block j of stage i ``sum(depths[:i]) + j + 1``; Swin's patch
    merging (at the end of stage i) goes with the last block of stage i,
    PVT's (at the start of stage i) with the first block of stage i; the
    rest (output norm, head) last."""
    depths = (SWIN_TINY if arch == 'swin' else PVT_TINY)['depths']
    n = sum(depths) + 2
    if name.startswith(('backbone.patch_embed', 'backbone.pos_embed')):
        return 0, n
    if name.startswith('backbone.stages.'):
        parts = name.split('.')
        i = int(parts[2])
        if parts[3] == 'blocks':
            return sum(depths[:i]) + int(parts[4]) + 1, n
        return (sum(depths[:i + 1]) if arch == 'swin' else
                sum(depths[:i]) + 1), n
    return n - 1, n


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return cache_root(tmp_path_factory)


@pytest.mark.parametrize('arch,rate', [
    ('swin', 0.85),
    pytest.param('pvt', 0.85, marks=pytest.mark.slow)])
def test_layer_decay_follows_depth(root, arch, rate):
    ckpt, runner = intermediate(arch, root)
    groups = runner.optim_wrapper.optimizer.param_groups
    names = {g['param_name'] for g in groups}
    model = runner.model
    assert names == {n for n, p in model.named_parameters()
                     if p.requires_grad}
    head_lr = next(g['lr'] for g in groups
                   if g['param_name'] == 'head.fc.weight')
    for g in groups:
        depth, n = expected_depth(arch, g['param_name'])
        assert g['layer_id'] == depth, g['param_name']
        assert g['lr_scale'] == pytest.approx(rate**(n - 1 - depth))
        # after the scheduler steps every group keeps its ratio to the head
        assert g['lr'] / head_lr == pytest.approx(g['lr_scale'], rel=1e-5)
    scales = sorted({round(g['lr_scale'], 8) for g in groups})
    assert len(scales) == n  # one lr per layer, patch embedding lowest
    assert scales[0] == pytest.approx(rate**(n - 1))
    # no decay on norms, biases and the position-bias MLP
    for g in groups:
        flat = g['params'][0].ndim == 1 or '.cpb' in g['param_name']
        assert (g['weight_decay'] == 0) == flat, g['param_name']


@pytest.mark.parametrize(
    'arch', ['swin', pytest.param('pvt', marks=pytest.mark.slow)])
def test_starts_from_pretraining_and_saves_backbone(root, arch):
    """The pre-trained encoder was loaded (2 warm-up steps barely move it),
    and the classifier checkpoint carries it under `backbone.` for the
    downstream configs."""
    ckpt, runner = intermediate(arch, root)
    pre = torch.load(pretrain(f'um_mae_{arch}', root), map_location='cpu',
                     weights_only=False)['state_dict']
    out = torch.load(ckpt, map_location='cpu',
                     weights_only=False)['state_dict']
    backbone = {k for k in out if k.startswith('backbone.')}
    assert backbone and {k for k in out if k.startswith('head.')}
    assert backbone <= set(pre) | {
        f'backbone.norm{i}.{w}' for i in range(4) for w in ('weight', 'bias')}
    for k in backbone & set(pre):
        if k.endswith('pos_embed') and out[k].shape != pre[k].shape:
            continue  # fixed sin-cos table, built for each model's own grid
        assert torch.allclose(out[k], pre[k], atol=1e-3), k
    assert runner.iter == 2


def test_green_mim_window_change_at_finetuning():
    """GreenMIM weights are mmpretrain Swin weights; Swin-L is pre-trained
    with 14x14 windows and fine-tuned with 7x7 (configs/finetune/
    green_mim_swin_l_100e.py), which resizes the bias tables on load."""
    from mmpretrain.models import SwinTransformer
    torch.manual_seed(0)
    src = SwinTransformer(arch=SWIN_TINY, img_size=128, window_size=4)
    dst = SwinTransformer(arch=SWIN_TINY, img_size=128, window_size=7)
    dst.load_state_dict(src.state_dict(), strict=False)
    table = 'stages.0.blocks.0.attn.w_msa.relative_position_bias_table'
    assert dst.state_dict()[table].shape == (13 * 13, 2)
