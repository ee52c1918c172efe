"""Released LocalMIM / ViTFreeze checkpoints -> mmum's LocalMIM
(tools/model_converters/local_mim_official_to_mmum.py).

The state dicts are built here in the released key layout (no released
code), and ``released_loss`` is a functional reference of the released
forward written from its description: ViT encoder, decoder-input LayerNorm,
one MAE decoder per scale with the released heads, HOG targets, masked MSE
per scale summed with equal weights.
"""
import importlib.util
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import mmum  # noqa: F401
from mmum.models.necks.local_mim_decoder import released_sincos
from mmum.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(path):
    spec = importlib.util.spec_from_file_location(
        path.replace('/', '_'), osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool('tools/model_converters/local_mim_official_to_mmum.py')


pytestmark = pytest.mark.usefixtures('one_thread')


SCALES = (4., 2., 1., .5)
SOBEL = torch.tensor([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]])


def released_block(prefix, dims, hidden):
    return {
        f'{prefix}.norm1.weight': torch.rand(dims) + .5,
        f'{prefix}.norm1.bias': torch.randn(dims) * .1,
        f'{prefix}.attn.qkv.weight': torch.randn(3 * dims, dims) * .1,
        f'{prefix}.attn.qkv.bias': torch.randn(3 * dims) * .1,
        f'{prefix}.attn.proj.weight': torch.randn(dims, dims) * .1,
        f'{prefix}.attn.proj.bias': torch.randn(dims) * .1,
        f'{prefix}.norm2.weight': torch.rand(dims) + .5,
        f'{prefix}.norm2.bias': torch.randn(dims) * .1,
        f'{prefix}.mlp.fc1.weight': torch.randn(hidden, dims) * .1,
        f'{prefix}.mlp.fc1.bias': torch.randn(hidden) * .1,
        f'{prefix}.mlp.fc2.weight': torch.randn(dims, hidden) * .1,
        f'{prefix}.mlp.fc2.bias': torch.randn(dims) * .1,
    }


def released_state_dict(dims=32, depth=4, hidden=64, patch=8, grid=4,
                        dec_dims=16, scales=SCALES, seed=0):
    """Flat state dict in the released ``MaskedAutoencoderViT`` layout with
    one decoder per entry of ``scales`` (numbered from 0, as after the
    released FreezeOut pruned the ones in front)."""
    torch.manual_seed(seed)
    sd = {
        'cls_token': torch.randn(1, 1, dims) * .02,
        'pos_embed': torch.randn(1, 1 + grid**2, dims) * .1,
        'patch_embed.proj.weight': torch.randn(dims, 3, patch, patch) * .1,
        'patch_embed.proj.bias': torch.randn(dims) * .1,
    }
    for i in range(depth):
        sd.update(released_block(f'blocks.{i}', dims, hidden))
    for j, s in enumerate(scales):
        d = f'decoder.{j}'
        sd[f'norm.{j}.weight'] = torch.rand(dims) + .5
        sd[f'norm.{j}.bias'] = torch.randn(dims) * .1
        sd[f'{d}.embed.weight'] = torch.randn(dec_dims, dims) * .1
        sd[f'{d}.embed.bias'] = torch.randn(dec_dims) * .1
        sd[f'{d}.mask_token'] = torch.randn(1, 1, dec_dims) * .02
        sd[f'{d}.pos_embed'] = released_sincos((grid, grid), dec_dims)
        sd.update(released_block(f'{d}.blocks.0', dec_dims, 4 * dec_dims))
        sd[f'{d}.norm.weight'] = torch.rand(dec_dims) + .5
        sd[f'{d}.norm.bias'] = torch.randn(dec_dims) * .1
        c = dec_dims
        if s == 4.:  # ConvT, LN, GELU, ConvT, 1x1
            sd[f'{d}.pred.0.weight'] = torch.randn(c, c // 2, 2, 2) * .1
            sd[f'{d}.pred.0.bias'] = torch.randn(c // 2) * .1
            sd[f'{d}.pred.1.weight'] = torch.rand(c // 2) + .5
            sd[f'{d}.pred.1.bias'] = torch.randn(c // 2) * .1
            sd[f'{d}.pred.3.weight'] = torch.randn(c // 2, c // 4, 2, 2) * .1
            sd[f'{d}.pred.3.bias'] = torch.randn(c // 4) * .1
            last, c = 4, c // 4
        elif s == 2.:  # ConvT, 1x1
            sd[f'{d}.pred.0.weight'] = torch.randn(c, c // 2, 2, 2) * .1
            sd[f'{d}.pred.0.bias'] = torch.randn(c // 2) * .1
            last, c = 1, c // 2
        else:  # 1x1, or AvgPool then 1x1
            last = 0 if s == 1. else 1
        sd[f'{d}.pred.{last}.weight'] = torch.randn(27, c, 1, 1) * .1
        sd[f'{d}.pred.{last}.bias'] = torch.randn(27) * .1
        sd[f'hog_enc.{j}.conv.weight'] = torch.stack([SOBEL, SOBEL.t()
                                                      ])[:, None]
    return sd


def _ln(x, sd, prefix, dim=-1):
    if dim == 1:  # over the channels of a (B, C, H, W) map
        return _ln(x.permute(0, 2, 3, 1), sd, prefix).permute(0, 3, 1, 2)
    return F.layer_norm(x, x.shape[-1:], sd[prefix + '.weight'],
                        sd[prefix + '.bias'], 1e-6)


def _block(x, sd, p, heads):
    B, N, C = x.shape
    h = _ln(x, sd, p + '.norm1')
    q, k, v = F.linear(h, sd[p + '.attn.qkv.weight'],
                       sd[p + '.attn.qkv.bias']).view(B, N, 3, heads,
                                                      -1).permute(
                                                          2, 0, 3, 1, 4)
    a = (q @ k.transpose(-2, -1) * (C // heads)**-.5).softmax(-1) @ v
    x = x + F.linear(a.transpose(1, 2).reshape(B, N, C),
                     sd[p + '.attn.proj.weight'], sd[p + '.attn.proj.bias'])
    h = F.gelu(F.linear(_ln(x, sd, p + '.norm2'), sd[p + '.mlp.fc1.weight'],
                        sd[p + '.mlp.fc1.bias']))
    return x + F.linear(h, sd[p + '.mlp.fc2.weight'], sd[p + '.mlp.fc2.bias'])


def released_loss(sd, img, feeding, scales, cells, heads=2, dec_heads=2):
    """Released forward + loss; decoder ``j`` reads block ``feeding[j]`` and
    predicts the HOG of ``cells[j]`` at ``scales[j]`` x the patch grid."""
    from mmum.models.heads.hog_target import HOGTarget
    B = img.shape[0]
    w = sd['patch_embed.proj.weight']
    x = F.conv2d(img, w, sd['patch_embed.proj.bias'], stride=w.shape[-1])
    g = x.shape[-1]
    x = x.flatten(2).transpose(1, 2) + sd['pos_embed'][:, 1:]
    L, C = x.shape[1:]
    keep = int(L * .25)
    ids_shuffle = torch.rand(B, L).argsort(1)
    ids_restore = ids_shuffle.argsort(1)
    x = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, C))
    mask = torch.ones(B, L)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)
    cls = (sd['cls_token'] + sd['pos_embed'][:, :1]).expand(B, -1, -1)
    x = torch.cat([cls, x], 1)
    latents = {}
    for i in range(max(feeding) + 1):
        x = _block(x, sd, f'blocks.{i}', heads)
        if i in feeding:
            latents[i] = x
    targets = HOGTarget(cell_sizes=cells)(img)
    loss, preds = 0., []
    for j, (i, s) in enumerate(zip(feeding, scales)):
        d = f'decoder.{j}'
        y = F.linear(_ln(latents[i], sd, f'norm.{j}'),
                     sd[f'{d}.embed.weight'], sd[f'{d}.embed.bias'])
        D = y.shape[-1]
        y_ = torch.cat(
            [y[:, 1:], sd[f'{d}.mask_token'].repeat(B, L - keep, 1)], 1)
        y_ = y_.gather(1, ids_restore[..., None].expand(-1, -1, D))
        y = torch.cat([y[:, :1], y_], 1) + sd[f'{d}.pos_embed']
        y = _ln(_block(y, sd, f'{d}.blocks.0', dec_heads), sd, f'{d}.norm')
        y = y[:, 1:].transpose(1, 2).reshape(B, D, g, g)
        if s >= 2:
            y = F.conv_transpose2d(y, sd[f'{d}.pred.0.weight'],
                                   sd[f'{d}.pred.0.bias'], stride=2)
        if s == 4:
            y = F.gelu(_ln(y, sd, f'{d}.pred.1', dim=1))
            y = F.conv_transpose2d(y, sd[f'{d}.pred.3.weight'],
                                   sd[f'{d}.pred.3.bias'], stride=2)
        if s == .5:
            y = F.avg_pool2d(y, 2)
        last = {4.: 4, 2.: 1, 1.: 0, .5: 1}[s]
        y = F.conv2d(y, sd[f'{d}.pred.{last}.weight'],
                     sd[f'{d}.pred.{last}.bias'])
        pred = y.flatten(2).transpose(1, 2)
        target = targets[j].flatten(2).transpose(1, 2)
        m = mask.view(B, g, g)
        if s >= 1:
            m = m.repeat_interleave(int(s), 1).repeat_interleave(int(s), 2)
        else:
            m = m.unflatten(2, (-1, 2)).unflatten(1, (-1, 2)).mean((2, 4))
        m = m.flatten(1)
        loss = loss + (((pred - target)**2).mean(-1) * m).sum() / m.sum()
        preds.append(pred)
    return loss, preds


def tiny_model():
    torch.manual_seed(1)
    model = MODELS.build(
        dict(
            type='mmum.LocalMIM',
            data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor',
                                   mean=[0, 0, 0], std=[1, 1, 1]),
            backbone=dict(type='mmum.LocalMIMViT',
                          arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                                    feedforward_channels=64),
                          img_size=32, patch_size=8, out_indices=(0, 1, 2, 3)),
            neck=dict(type='mmum.LocalMIMDecoder', embed_dims=16, num_heads=2),
            head=dict(type='mmpretrain.MIMHead',
                      loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                criterion='L2')),
            target_generator=dict(type='mmum.HOGTarget',
                                  cell_sizes=(2, 4, 8, 16))))
    model.init_weights()
    return model


def test_converted_checkpoint_loads_strictly_and_computes_the_same():
    sd = released_state_dict()
    out, info = tool.official_to_mmum(sd)
    model = tiny_model()
    model.load_state_dict(out, strict=True)
    assert info['pruned_decoders'] == []
    img = torch.randn(2, 3, 32, 32)
    torch.manual_seed(7)
    ref, ref_preds = released_loss(sd, img, (0, 1, 2, 3), SCALES,
                                   (2, 4, 8, 16))
    torch.manual_seed(7)
    losses = model.loss(img, None)
    assert sorted(losses) == ['loss_16x16', 'loss_2x2', 'loss_4x4',
                              'loss_8x8']
    torch.testing.assert_close(sum(losses.values()), ref, rtol=1e-5,
                               atol=1e-6)
    torch.manual_seed(7)
    feats, _, ids_restore = model.backbone(img)
    for k, pred in enumerate(ref_preds):
        torch.testing.assert_close(model.neck[k](feats[k], ids_restore),
                                   pred, rtol=1e-4, atol=1e-5)


def test_checkpoint_after_released_pruning():
    """Released FreezeOut deletes pruned decoders from the front of its
    lists: two left are mmum decoders 2 and 3; 0 and 1 are reported."""
    sd = released_state_dict(scales=SCALES[2:])
    out, info = tool.official_to_mmum(sd)
    assert info['pruned_decoders'] == [0, 1]
    model = tiny_model()
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected
    assert {k.split('.')[1] for k in missing} == {'0', '1'}
    assert all(k.startswith('neck.') for k in missing)
    for k in info['pruned_decoders']:
        model.prune_decoder(k)
    img = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    ref, _ = released_loss(sd, img, (2, 3), SCALES[2:], (8, 16))
    torch.manual_seed(3)
    losses = model.loss(img, None)
    assert sorted(losses) == ['loss_2x2', 'loss_4x4']
    torch.testing.assert_close(sum(losses.values()), ref, rtol=1e-5,
                               atol=1e-6)


def test_vit_b_layout_loads_into_the_config_model():
    """The released ViT-B/16 layout (MIM_vit_base_patch16: 768-d, 12 blocks,
    256-d decoders) loads strictly into configs/vitfreeze's LocalMIM."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    sd = released_state_dict(dims=768, depth=12, hidden=3072, patch=16,
                             grid=14, dec_dims=256)
    out, info = tool.official_to_mmum(sd)
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/vitfreeze/local_mim_vit_b_100e.py'))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(
            dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
    model.load_state_dict(out, strict=True)
    settings = tool.mmum_settings(info)
    assert settings['backbone']['arch'] == 'b'
    assert settings['backbone']['out_indices'] == (1, 3, 9, 11)
    assert settings['neck']['embed_dims'] == 256
    assert len(out) == len(sd) - 8  # 4 decoder positions, 4 HOG kernels


def test_cli(tmp_path, capsys):
    src, dst = tmp_path / 'released.pth', tmp_path / 'mmum.pth'
    torch.save({'model': released_state_dict(scales=SCALES[1:]),
                'epoch': 59, 'args': None}, src)
    tool.main([str(src), str(dst)])
    printed = capsys.readouterr().out
    assert 'decoders [0] were pruned' in printed
    assert "decoders ['1', '2', '3']" in printed
    ckpt = torch.load(dst, weights_only=False)
    assert ckpt['meta']['pruned_decoders'] == [0]
    assert ckpt['meta']['official_epoch'] == 59
    assert 'neck.1.resize.0.weight' in ckpt['state_dict']


def test_refuses_other_architectures():
    # MAE (single decoder) keys
    mae = {'cls_token': torch.zeros(1, 1, 8), 'norm.weight': torch.ones(8),
           'decoder_embed.weight': torch.zeros(4, 8),
           'blocks.0.attn.qkv.weight': torch.zeros(24, 8)}
    with pytest.raises(ValueError, match=r"missing \['pos_embed'.*"
                       r"decoder_embed"):
        tool.official_to_mmum(mae)
    # GreenMIM / Swin keys
    with pytest.raises(ValueError, match='layers.*patch_embed.proj.weight'):
        tool.official_to_mmum({'layers.0.blocks.0.attn.qkv.weight':
                               torch.zeros(3)} | {
                                   'patch_embed.proj.weight': torch.zeros(1)})
    sd = released_state_dict()
    with pytest.raises(ValueError, match=r"no mmum counterpart: \['foo'\]"):
        tool.official_to_mmum(dict(sd, foo=torch.zeros(1)))
    # all_stages (12 decoders) is another layout
    many = released_state_dict(scales=SCALES + SCALES[:1])
    with pytest.raises(ValueError, match='at most 4'):
        tool.official_to_mmum(many)
    # a 56² head where the 7² decoder belongs
    wrong = released_state_dict(scales=(4., ))
    with pytest.raises(ValueError, match=r'decoder.0 is mmum decoder 3'):
        tool.official_to_mmum(wrong)
    bad_hog = dict(sd)
    bad_hog['hog_enc.1.conv.weight'] = -sd['hog_enc.1.conv.weight']
    with pytest.raises(ValueError, match='hog_enc.1.conv.weight'):
        tool.official_to_mmum(bad_hog)
