import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.datasets.transforms import UniformMasking
from mmum.models.selfsup.um_mae import visible_index
from mmum.registry import MODELS
from _tiny_runs import fit

CFG = Config.fromfile('configs/um_mae/swin_t_200e.py')
TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])


def build(tiny=True, **backbone):
    cfg = copy.deepcopy(CFG.model)
    if tiny:
        cfg.backbone.arch = TINY
        cfg.neck.embed_dim = 256
        cfg.neck.decoder_embed_dim = 256
        cfg.neck.decoder_num_heads = 8
    cfg.backbone.update(backbone)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def batch(n=2, size=256, seed=0):
    rng = np.random.RandomState(seed)
    np.random.seed(seed)
    t = UniformMasking()
    samples = []
    for _ in range(n):
        r = t.transform(dict(img=np.zeros((size, size, 3))))
        ds = DataSample()
        ds.set_mask(torch.from_numpy(r['mask']))
        ds.set_field(torch.from_numpy(r['secondary_mask']), 'secondary_mask')
        samples.append(ds)
    x = torch.from_numpy(rng.randn(n, 3, size, size).astype(np.float32))
    return x, samples


def test_compact_gathers_the_visible_patches():
    model = build()
    x, samples = batch()
    mask = torch.stack([s.mask for s in samples])
    idx = visible_index(mask)
    c = model.compact(x, idx)
    assert c.shape == (2, 3, 128, 128)
    # compact unit (i, j) == the visible patch of cell (i, j)
    for b in range(2):
        for i in range(8):
            for j in range(8):
                cell = 1 - mask[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                di, dj = (cell == 1).nonzero()[0].tolist()
                r, q = 2 * i + di, 2 * j + dj
                assert idx[b, i * 8 + j] == r * 16 + q
                assert torch.equal(
                    c[b, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16],
                    x[b, :, 16 * r:16 * r + 16, 16 * q:16 * q + 16])


def test_first_stage_sees_a_quarter_of_the_tokens():
    model = build(tiny=False)  # the real Swin-T
    seen = []
    model.backbone.stages[0].blocks[0].norm1.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[1]))
    x, samples = batch(n=1)
    model.loss(x, samples)
    full = (256 // 4)**2
    assert seen == [full // 4]


def test_secondary_mask_reaches_the_encoder():
    model = build()
    x, samples = batch(n=1)
    tokens = []
    model.backbone.stages[0].blocks[0].norm1.register_forward_pre_hook(
        lambda m, args: tokens.append(args[0]))
    model.loss(x, samples)
    tok = tokens[0][0].view(32, 32, -1)
    _, idx, sec = model.masks(x, samples)
    sec = sec[0].repeat_interleave(4, 0).repeat_interleave(4, 1).bool()
    # after patch embedding, secondary-masked units hold the mask token,
    # which replaces the projection before the embedding's LayerNorm
    bb = model.backbone
    mt = bb.patch_embed.norm(bb.mask_token).view(-1)
    assert torch.allclose(tok[sec], mt.expand(int(sec.sum()), -1))
    assert not torch.allclose(tok[~sec][:5], mt.expand(5, -1))


def test_loss_only_on_dropped_patches():
    model = build()
    x, samples = batch(n=1)
    loss = model.loss(x, samples)['loss']
    # changing a visible patch's pixels in the *target* does not matter,
    # changing a dropped one does: check through the head directly
    mask = torch.stack([s.mask for s in samples]).flatten(1)
    pred = torch.zeros(1, 256, 768)
    base = model.head.loss(pred, x, mask)
    y = x.clone()
    vis = int((mask[0] == 0).nonzero()[0])
    r, q = divmod(vis, 16)
    y[..., 16 * r:16 * r + 16, 16 * q:16 * q + 16] += torch.randn(3, 16, 16)
    assert torch.allclose(model.head.loss(pred, y, mask), base)
    assert torch.isfinite(loss)


def photo_batch(size=64):
    """One real photo (scikit-image's astronaut), normalised like the data
    preprocessor, with a uniform mask."""
    import cv2
    from skimage import data
    img = cv2.resize(data.astronaut(), (size, size),
                     interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (x - mean) / std, batch(n=1, size=size)[1]


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = copy.deepcopy(CFG.model)
    cfg.backbone.arch = TINY
    cfg.neck.update(embed_dim=256, decoder_embed_dim=128,
                    decoder_num_heads=4, num_patches=16)
    model = MODELS.build(cfg)
    model.init_weights()
    x, samples = photo_batch(64)
    # 1e-3: the released (Xavier) initialisation starts larger than 0.02
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                            weight_decay=0)
    losses = fit(opt, lambda: model.loss(x, samples)['loss'], 100)
    assert min(losses[-5:]) * 5 <= losses[0], losses


def test_reconstruct_shape():
    model = build()
    x, samples = batch(n=2)
    assert model.reconstruct(x, samples).shape == x.shape


@pytest.mark.parametrize('window', [7, 4])
def test_window_breaking_equivalence_is_explained(window):
    model = build(window_size=window)
    x, samples = batch(n=1)
    with pytest.raises(ValueError,
                       match=rf'window_size={window} breaks the compact'):
        model.loss(x, samples)


def test_image_size_not_multiple_of_64():
    model = build()
    x, samples = batch(n=1, size=224)
    with pytest.raises(ValueError, match=r'112x112.*multiple of 64 px'):
        model.loss(x, samples)


def test_non_uniform_mask_is_rejected():
    model = build()
    x, samples = batch(n=1)
    samples[0].mask[0, :2] = 0  # two visible patches in cell (0, 0)
    with pytest.raises(ValueError, match='exactly one visible patch'):
        model.loss(x, samples)


def test_missing_secondary_mask():
    model = build()
    x, _ = batch(n=1)
    ds = DataSample()
    ds.set_mask(torch.zeros(16, 16))
    with pytest.raises(KeyError, match='UniformMasking'):
        model.loss(x, [ds])


def test_window_changes_at_fine_tuning():
    """The CPB bias is weight-free in the window: the encoder weights run
    with window 16 and window 7 without any conversion."""
    from mmum.models.backbones import CPBSwinTransformer
    model = build()
    sd = {k: v for k, v in model.backbone.state_dict().items()
          if k != 'mask_token'}
    # the pre-training layout (released UM-MAE), as the fine-tuning configs
    ln = dict(type='LN', eps=1e-6)
    layout = dict(patch_merging='conv', cpb_hidden_dims=32, norm_cfg=ln,
                  patch_cfg=dict(norm_cfg=ln),
                  stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln),
                                  downsample_cfg=dict(norm_cfg=ln)))
    for window, pad in [(16, False), (7, True)]:
        ft = CPBSwinTransformer(arch=TINY, window_size=window,
                                pad_small_map=pad, out_indices=(0, 1, 2, 3),
                                **layout)
        missing, unexpected = ft.load_state_dict(sd, strict=False)
        # only the norms of the extra output stages are new
        assert not unexpected
        assert {k.split('.')[0] for k in missing} == {'norm0', 'norm1',
                                                      'norm2'}
        outs = ft(torch.randn(1, 3, 224, 224))
        assert [o.shape[-1] for o in outs] == [56, 28, 14, 7]


def test_layer_depth_covers_mask_token_and_conv_merging():
    from mmum.models.backbones import UMSwinTransformer
    m = UMSwinTransformer(arch=TINY, window_size=8, patch_merging='conv')
    depth = {n: m.get_layer_depth('backbone.' + n, 'backbone.')[0]
             for n, _ in m.named_parameters()}
    assert depth['mask_token'] == 0
    assert depth['stages.0.downsample.proj.weight'] == 2  # end of stage 0
    assert depth['stages.1.blocks.0.attn.w_msa.qkv.weight'] == 3
    assert m.get_layer_depth('neck.x', 'backbone.') == (9, 10)  # the head


@pytest.mark.parametrize('neck', ['mmum.UMMAEPretrainDecoder',
                                  'mmum.UMMAEEmbedFirstDecoder'])
def test_predicting_only_the_loss_patches_changes_nothing(neck):
    """The loss reads only the dropped patches, so the decoder's last block
    runs only their queries (``block_at``): loss and every gradient equal
    those of predicting all patches and masking the loss (the MAE way)."""
    from mmum.models.selfsup.um_mae import dropped_index
    torch.manual_seed(0)
    model = build()
    cfg = copy.deepcopy(CFG.model.neck)
    cfg.update(type=neck, embed_dim=256, decoder_embed_dim=256,
               decoder_num_heads=8)
    model.neck = MODELS.build(cfg)
    model.neck.init_weights()
    x, samples = batch(n=2)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()
                if p.grad is not None}

    new = model.loss(x, samples)['loss']
    g_new = grads(new)
    mask, index, secondary = model.masks(x, samples)
    latent = model.backbone(model.compact(x, index), secondary, index)[-1]
    full = model.neck(latent, index)  # B, L, p*p*3: every patch
    old = model.head.loss(full, x, mask.flatten(1))
    g_old = grads(old)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    assert g_new.keys() == g_old.keys()
    for n in g_old:
        torch.testing.assert_close(g_new[n], g_old[n], rtol=1e-4, atol=1e-6,
                                   msg=n)
    # and the pruned predictions are the full ones at the dropped patches
    dropped = dropped_index(mask)
    assert dropped.shape == (2, 192)
    assert bool(mask.flatten(1).gather(1, dropped).all())
    part = model.neck(latent, index, dropped)
    torch.testing.assert_close(
        part, full.gather(1, dropped.unsqueeze(-1).expand(-1, -1, 768)),
        rtol=1e-5, atol=1e-5)


def test_block_at_matches_the_block():
    """``block_at`` == the mmpretrain block's output at the chosen tokens,
    with layer scale, no qkv bias and a value shortcut."""
    from mmpretrain.models.backbones.vision_transformer import \
        TransformerEncoderLayer

    from mmum.models.layers import block_at
    torch.manual_seed(0)
    x = torch.randn(3, 20, 64)
    index = torch.stack([torch.randperm(20)[:7] for _ in range(3)])
    for kw in (dict(), dict(layer_scale_init_value=0.1, qkv_bias=False)):
        blk = TransformerEncoderLayer(64, 4, 128, **kw).eval()
        want = blk(x).gather(1, index.unsqueeze(-1).expand(-1, -1, 64))
        torch.testing.assert_close(block_at(blk, x, index), want,
                                   rtol=1e-5, atol=1e-5)
    blk = TransformerEncoderLayer(64, 1, 128).eval()
    blk.attn.v_shortcut = True  # falls back to the whole block
    want = blk(x).gather(1, index.unsqueeze(-1).expand(-1, -1, 64))
    torch.testing.assert_close(block_at(blk, x, index), want)


def test_block_shared_rows_matches_the_block():
    """``block_shared_rows`` (the shared rows' LayerNorm and qkv once per
    batch) == the mmpretrain block on the assembled input: values and the
    gradients of the tokens, the shared rows and every weight; with layer
    scale, no qkv bias and a value shortcut."""
    from mmpretrain.models.backbones.vision_transformer import \
        TransformerEncoderLayer

    from mmum.models.layers import block_shared_rows
    torch.manual_seed(0)
    B, L, N, D = 3, 20, 6, 64
    rows = torch.stack([torch.randperm(L)[:N] for _ in range(B)])
    for kw in (dict(), dict(layer_scale_init_value=0.1, qkv_bias=False),
               dict(v_shortcut=True)):
        v_shortcut = kw.pop('v_shortcut', False)
        blk = TransformerEncoderLayer(D, 4 if not v_shortcut else 1, 128,
                                      **kw)
        blk.attn.v_shortcut = v_shortcut
        outs = []
        for shared_rows in (True, False):
            torch.manual_seed(1)
            x = torch.randn(B, N, D, requires_grad=True)
            shared = torch.randn(L, D, requires_grad=True)
            if shared_rows:
                y = block_shared_rows(blk, x, rows, shared)
            else:
                full = shared.expand(B, L, D).scatter(
                    1, rows.unsqueeze(-1).expand(-1, -1, D), x)
                y = blk(full)
            blk.zero_grad()
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            outs.append([y, x.grad, shared.grad] +
                        [p.grad.clone() for p in blk.parameters()])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('depth', [0, 1, 2])
def test_decoder_equals_mask_tokens_through_the_blocks(depth):
    """The decoder (first block with shared rows, last block only at the
    targets) == the plain MAE way: mask tokens scattered among the visible
    tokens, positions added, every block on every token, then the targets
    read; values and the gradients of every decoder parameter (in float64:
    the sums run in a different order)."""
    torch.manual_seed(0)
    cfg = copy.deepcopy(CFG.model.neck)
    cfg.update(type='mmum.UMMAEEmbedFirstDecoder', embed_dim=64,
               decoder_embed_dim=32, decoder_num_heads=4, mlp_ratio=2,
               decoder_depth=depth)
    neck = MODELS.build(cfg)
    neck.init_weights()
    neck.double()
    B, L, N, D = 2, neck.num_patches, neck.num_patches // 4, 32
    visible = torch.stack([torch.randperm(L)[:N] for _ in range(B)])
    target = torch.stack([torch.randperm(L)[:L // 2] for _ in range(B)])
    x = torch.randn(B, N, D, dtype=torch.float64)

    def reference(x):
        full = neck.mask_token.expand(B, L, D).scatter(
            1, visible.unsqueeze(-1).expand(-1, -1, D), x)
        y = full + neck.decoder_pos_embed[:, 1:]
        for blk in neck.decoder_blocks:
            y = blk(y)
        y = y.gather(1, target.unsqueeze(-1).expand(-1, -1, D))
        return neck.decoder_pred(neck.decoder_norm(y))

    outs = []
    for fn in (lambda x: neck.decode(x, visible, target), reference):
        neck.zero_grad()
        y = fn(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y, {n: p.grad.clone() for n, p in neck.named_parameters()
                         if p.grad is not None}))
    (y, g), (y_ref, g_ref) = outs
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert g.keys() == g_ref.keys() and 'mask_token' in g
    assert len(g) == 5 + 12 * depth  # all but decoder_embed (before decode)
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f'{n}: {m}')


def test_step_reads_no_device_data():
    """No host-device sync in the training step: with the model and images
    on the ``meta`` device (tensors without data, so any ``.item()``,
    ``bool()``, ``.tolist()`` or ``nonzero()`` on them raises), forward and
    backward still run; the masks are checked and indexed on the host."""
    model = build()
    x, samples = batch(n=2)
    model.to('meta')
    loss = model.loss(x.to('meta'), samples)['loss']
    assert loss.device.type == 'meta'
    loss.backward()
    assert model.backbone.mask_token.grad.device.type == 'meta'


def test_initialised_as_released():
    """Encoder and decoder start as the release's ``initialize_weights``:
    Xavier-uniform linears (the bias MLP's 1x1 convs: N(0, sqrt(2/out))),
    zero biases, the patch embedding Xavier-uniform as a linear map."""
    import math

    from mmum.models.layers import LogCPB
    torch.manual_seed(0)
    model = build()
    cpb = {id(m) for c in model.modules() if isinstance(c, LogCPB)
           for m in c.mlp}
    cpb_w = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and id(m) in cpb:
            cpb_w.append(m.weight.flatten() / math.sqrt(2 / m.out_features))
        elif isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            w = m.weight
            assert w.abs().max() <= bound, name
            # uniform on [-b, b]: std b / sqrt(3)
            assert abs(float(w.std()) * math.sqrt(3) / bound - 1) < 0.1, name
        else:
            continue
        if m.bias is not None:
            assert not m.bias.any(), name
    assert abs(float(torch.cat(cpb_w).std()) - 1) < 0.05  # unit after scale
    w = model.backbone.patch_embed.projection.weight.flatten(1)
    bound = math.sqrt(6 / sum(w.shape))
    assert w.abs().max() <= bound and \
        abs(float(w.std()) * math.sqrt(3) / bound - 1) < 0.1
