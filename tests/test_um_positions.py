"""UM-MAE encoders with the visible patches' original positions (issue 13):
Swin's relative-position bias from original offsets, PVT's sin-cos table at
original positions, and the original-size pipeline of paper Fig. 3 written
out by hand as an independent sparse reference."""
import math
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

import mmum  # noqa: F401
from mmum.datasets.transforms import UniformMasking
from mmum.models.backbones import UMPVT, UMSwinTransformer
from mmum.models.layers.cpb_window_attention import LogCPB
from mmum.models.layers.um_positions import original_positions
from mmum.models.selfsup.um_mae import UMMAE, visible_index
from mmum.registry import MODELS

SWIN = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PVT_TINY = dict(embed_dims=[16, 16, 32, 32], depths=[1, 1, 1, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
P = 16  # masking unit, px


def masks(n=2, size=256, seed=0):
    """Uniform masks (B, h, w), 1 = dropped, and secondary masks."""
    np.random.seed(seed)
    t = UniformMasking()
    drawn = [t.sample(size // P, size // P) for _ in range(n)]
    return (torch.from_numpy(np.stack([d[0] for d in drawn])),
            torch.from_numpy(np.stack([d[1] for d in drawn])))


def compact(img, index):
    return UMMAE.compact(SimpleNamespace(patch_size=P), img, index)


def units_to_full(x, index, unit):
    """Blocks of ``unit`` x ``unit`` of a compact map (B, C, H, W) placed at
    their original units ``index`` of the (B, C, 2H, 2W) map (rest 0)."""
    B, C, H, W = x.shape
    hu, wu = H // unit, W // unit
    blocks = x.view(B, C, hu, unit, wu, unit).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(B, hu * wu, C, unit, unit)
    full = x.new_zeros(B, 4 * hu * wu, C, unit, unit)
    full.scatter_(1, index.view(B, -1, 1, 1, 1).expand_as(blocks), blocks)
    return full.view(B, 2 * hu, 2 * wu, C, unit, unit).permute(
        0, 3, 1, 4, 2, 5).reshape(B, C, 2 * H, 2 * W)


def full_to_units(full, index, unit):
    """Inverse of :func:`units_to_full`: the visible units of a full map in
    the compact layout."""
    B, C, H, W = full.shape
    hf, wf = H // unit, W // unit
    blocks = full.view(B, C, hf, unit, wf, unit).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(B, hf * wf, C, unit, unit).gather(
        1, index.view(B, -1, 1, 1, 1).expand(-1, -1, C, unit, unit))
    return blocks.view(B, hf // 2, wf // 2, C, unit, unit).permute(
        0, 3, 1, 4, 2, 5).reshape(B, C, H // 2, W // 2)


def swin(positions='original', **kw):
    torch.manual_seed(0)
    model = UMSwinTransformer(arch=SWIN, img_size=128, window_size=8,
                              out_indices=(0, 1, 2, 3), positions=positions,
                              cpb_hidden_dims=16, **kw)
    model.init_weights()
    with torch.no_grad():  # biases of a few logits, so that they matter
        for m in model.modules():  # (whatever the initialisation)
            if isinstance(m, LogCPB):
                m.mlp[0].weight.normal_(0, 0.4)
                m.mlp[2].weight.normal_(0, 0.4)
    model.eval()
    return model


def pvt(positions='original'):
    torch.manual_seed(0)
    model = UMPVT(arch=PVT_TINY, img_size=128, out_indices=(0, 1, 2, 3),
                  positions=positions)
    model.init_weights()
    model.eval()
    return model


def two_masks_one_compact_image():
    """Finding 1 of issue 13: two uniform masks whose visible patches differ
    in most cells, and two images whose compact images are identical (each
    visible patch of the first copied to the second mask's visible patch of
    the same cell)."""
    (m1, m2), (s1, _) = masks(2, seed=3)
    i1, i2 = visible_index(m1[None]), visible_index(m2[None])
    assert (i1 != i2).float().mean() > 0.6
    torch.manual_seed(1)
    img1 = torch.randn(1, 3, 256, 256)
    img2 = units_to_full(compact(img1, i1), i2, P)
    assert torch.equal(compact(img2, i2), compact(img1, i1))
    sec = s1.flatten()[i1[0]].view(1, 8, 8)  # compact layout
    return compact(img1, i1), sec, i1, i2


@pytest.mark.parametrize('build', [swin, pvt], ids=['swin', 'pvt'])
def test_encoder_sees_where_a_patch_sits_in_its_cell(build):
    x, sec, i1, i2 = two_masks_one_compact_image()
    with torch.no_grad():
        for positions in ('original', 'compact'):
            model = build(positions)
            a, b = model(x, sec, i1), model(x, sec, i2)
            for s, (u, v) in enumerate(zip(a, b)):
                if positions == 'compact':  # blind to the original place
                    assert torch.equal(u, v), f'stage {s + 1}'
                else:
                    assert (u - v).abs().max() > 1e-3, f'stage {s + 1}'


def test_original_positions_of_compact_tokens():
    index = torch.tensor([[1 * 4 + 1, 0 * 4 + 2, 3 * 4 + 0, 2 * 4 + 3]])
    # 2x2 compact units of 16 px; compact unit (0, 0) is original (1, 1)
    pos, k = original_positions(index, (8, 8), 4, 16)  # stride 4
    assert k == 1 and pos.shape == (1, 8, 8, 2)
    assert pos[0, 0, 0].tolist() == [4, 4]  # (16 px, 16 px) / 4
    assert pos[0, 1, 2].tolist() == [5, 6]  # + 1 row, + 2 cols inside
    assert pos[0, 0, 4].tolist() == [0, 8]  # unit (0, 2)
    assert pos[0, 7, 7].tolist() == [11, 15]  # unit (2, 3) + (3, 3)
    pos, k = original_positions(index, (1, 1), 32, 16)  # two units wide
    # released: the top-left token's position halved at each merge, 4/8
    assert k == 2 and pos[0, 0, 0].tolist() == [1, 1]  # = (0.5, 0.5)
    with pytest.raises(ValueError, match=r'expected \(B, 4\)'):
        original_positions(index[:, :3], (8, 8), 4, 16)


def test_swin_bias_from_the_original_offset_hand_computed():
    """Neighbouring cells (0, 0) and (0, 1): the first keeps its
    bottom-right patch, the second its top-left one. Their top-left tokens
    are 4 tokens apart on the compact grid but (4, -4) in the original
    image at stride 4, (2, -2) at stride 8: the bias is the MLP's at that
    offset, in stage 1 and in stage 2."""
    mask = torch.ones(1, 16, 16)
    mask[:, ::2, ::2] = 0  # every cell keeps its top-left patch ...
    mask[0, 0, 0], mask[0, 1, 1] = 1, 0  # ... cell (0, 0) its bottom-right
    index = visible_index(mask)
    model = swin()
    seen = {}
    for s in (0, 1):
        cpb = model.stages[s].blocks[0].attn.w_msa.cpb

        def record(pos, scale, window, cpb=cpb, s=s):
            seen[s] = LogCPB.pairwise(cpb, pos, scale, window)
            return seen[s]

        cpb.pairwise = record
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128), torch.zeros(1, 8, 8), index)
    for s, key, offset in ((0, 4, 4), (1, 2, 2)):
        # window 0 of the unshifted block: tokens (0, 0) and (0, key)
        mlp = model.stages[s].blocks[0].attn.w_msa.cpb.mlp
        d = torch.tensor([offset, -offset], dtype=torch.float)
        want = mlp(torch.sign(d) * torch.log2(1 + d.abs()))
        torch.testing.assert_close(seen[s][0, :, 0, key], want)
        d = torch.tensor([0, -offset], dtype=torch.float)  # compact grid
        other = mlp(torch.sign(d) * torch.log2(1 + d.abs()))
        assert (other - want).abs().max() > 1e-2


def swin_sparse_full_size_reference(model, img, mask, secondary, stages=3):
    """Paper Fig. 3, upper pipeline, written out: Swin on the original-size
    token map where dropped patches are blank place holders.

    Full-size patch embedding (secondary-masked units: mask token before the
    embedding's LayerNorm); at each stage windows and shifts twice the
    compact ones, attention only among visible tokens of a (shifted) window,
    the bias of the dense full-size window (the model's MLP on the offsets
    of the full-size grid, i.e. the original ones); 2x2 patch merging of the
    full map. Returns the normalised maps of visible tokens (zeros elsewhere)
    at full size, stages 1..``stages``."""
    B = img.shape[0]
    pe = model.patch_embed
    x = pe.projection(img)  # B, C, 64, 64
    sec = secondary.float().repeat_interleave(4, 1).repeat_interleave(4, 2)
    x = x * (1 - sec[:, None]) + model.mask_token.view(1, -1, 1, 1) * \
        sec[:, None]
    x = pe.norm(x.flatten(2).transpose(1, 2))  # B, L, C
    H = W = math.isqrt(x.shape[1])
    vis = (mask == 0).repeat_interleave(4, 1).repeat_interleave(4, 2)
    outs = []
    for s, stage in enumerate(model.stages[:stages]):
        C = x.shape[-1]
        for blk in stage.blocks:
            win, shift = blk.attn.window_size, blk.attn.shift_size
            if H // 2 <= win:  # the compact map is one window: so is this
                win, shift = H // 2, 0
            win, shift = 2 * win, 2 * shift  # doubled on the full map
            # region of each token for the shifted windows (Swin's mask)
            region = torch.zeros(H, W)
            if shift:
                cuts = (slice(0, -win), slice(-win, -shift),
                        slice(-shift, None))
                for n, (a, b) in enumerate((a, b) for a in cuts
                                           for b in cuts):
                    region[a, b] = n

            def windows(t, roll=True):  # B, H, W, ... -> B*nW, win^2, ...
                if roll:
                    t = torch.roll(t, (-shift, -shift), (1, 2))
                t = t.reshape(t.shape[0], H // win, win, W // win, win,
                              *t.shape[3:]).transpose(2, 3)
                return t.reshape(-1, win * win, *t.shape[5:])

            n1 = windows(blk.norm1(x).view(B, H, W, C))
            keep = windows(vis)[:, None, None, :]  # key visible
            reg = windows(region.expand(B, H, W), roll=False)  # rolled frame
            keep = keep & (reg[:, :, None] == reg[:, None])[:, None]
            w_msa = blk.attn.w_msa
            heads = w_msa.num_heads
            q, k, v = w_msa.qkv(n1).view(n1.shape[0], -1, 3, heads,
                                         C // heads).permute(2, 0, 3, 1, 4)
            logits = q @ k.transpose(-1, -2) / math.sqrt(C // heads)
            logits = logits + w_msa.cpb(win)  # dense bias, full window
            a = logits.masked_fill(~keep, float('-inf')).softmax(-1)
            o = w_msa.proj((a @ v).transpose(1, 2).reshape(-1, win * win, C))
            o = o.view(B, H // win, W // win, win, win, C).transpose(2, 3)
            o = torch.roll(o.reshape(B, H, W, C), (shift, shift), (1, 2))
            x = x + o.reshape(B, H * W, C)
            x = blk.ffn(blk.norm2(x), identity=x)
            x = torch.where(vis.reshape(B, -1, 1), x, 0.)  # blanks stay blank
        out = getattr(model, f'norm{s}')(x)
        outs.append(torch.where(vis.reshape(B, -1, 1), out, 0.).transpose(
            1, 2).reshape(B, C, H, W))
        if stage.downsample is not None:
            x, (H, W) = stage.downsample(x, (H, W))
            vis = vis[:, ::2, ::2]
    return outs


def test_swin_compact_equals_the_original_size_pipeline():
    """Paper Fig. 3 with original positions: the compact pipeline equals
    the sparse full-size one token for token in stages 1-3 (the last patch
    merging merges units of four different cells: no full-size
    counterpart). With compact-grid offsets it does not."""
    mask, secondary = masks(2, seed=1)
    index = visible_index(mask)
    torch.manual_seed(0)
    img = torch.randn(2, 3, 256, 256)
    x = compact(img, index)
    sec = secondary.flatten(1).gather(1, index).view(2, 8, 8)
    model = swin()
    with torch.no_grad():
        outs = model(x, sec, index)
        ref = swin_sparse_full_size_reference(model, img, mask, secondary)
    for s, full in enumerate(ref):
        unit = 4 // 2**s  # tokens per unit side
        err = (full_to_units(full, index, unit) - outs[s]).abs().max()
        assert err <= 1e-5, f'stage {s + 1}: max abs diff {err}'
    compact_model = swin('compact')
    with torch.no_grad():
        other = compact_model(x, sec, index)[0]
    assert (full_to_units(ref[0], index, 4) - other).abs().max() > 1e-3


def test_no_positions_no_forward():
    x, sec, i1, _ = two_masks_one_compact_image()
    for model in (swin(), pvt()):
        with pytest.raises(ValueError, match="needs the visible patches'"):
            model(x, sec)
    with pytest.raises(ValueError, match="'original' or 'compact'"):
        UMSwinTransformer(arch=SWIN, positions='full')
    with pytest.raises(ValueError, match="'original' or 'compact'"):
        UMPVT(arch=PVT_TINY, positions='full')


def test_pvt_table_covers_the_original_image():
    assert pvt().pos_embed.shape == (1, 64 * 64, 16)
    assert pvt('compact').pos_embed.shape == (1, 32 * 32, 16)


def test_pvt_step_reads_no_device_data():
    """No host-device sync with original positions (``meta`` tensors have
    no data: any read-back raises)."""
    x, sec, i1, _ = two_masks_one_compact_image()
    for model in (pvt(), swin()):
        model.train()
        model.to('meta')
        out = model(x.to('meta'), sec.to('meta'), i1.to('meta'))[-1]
        out.sum().backward()
        assert model.mask_token.grad.device.type == 'meta'


def _decoder_input(neck, latent, index):
    """What enters the first decoder block (its input is assembled inside
    ``block_shared_rows``), less the position embeddings: (B, L, D)."""
    from mmum.models.necks import um_mae_decoder
    seen, run = [], um_mae_decoder.block_shared_rows

    def recording(block, x, rows, shared):
        B, N, D = x.shape
        seen.append(shared.expand(B, -1, D).scatter(
            1, rows.unsqueeze(-1).expand(-1, -1, D), x))
        return run(block, x, rows, shared)

    with mock.patch.object(um_mae_decoder, 'block_shared_rows', recording), \
            torch.no_grad():
        neck(latent, index)
    return seen[0] - neck.decoder_pos_embed[:, 1:]  # B, L, D


@pytest.mark.parametrize(
    'neck', ['mmum.UMMAEPretrainDecoder', 'mmum.UMMAEEmbedFirstDecoder'])
def test_decoder_places_each_visible_token_at_its_own_position(neck):
    """Paper §3.3: every token gets the position embedding of its own patch
    (the release pairs visible tokens with the embeddings in raster order,
    issue 13 "Keep"). Moving the visible patches moves their tokens, with
    the position embedding of where they land."""
    torch.manual_seed(0)
    dec = MODELS.build(
        dict(type=neck, embed_dim=64, num_patches=256, patch_size=16,
             decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4))
    dec.init_weights()
    latent = torch.randn(1, 64, 4, 4)
    (m1, m2), _ = masks(2, seed=5)
    i1, i2 = visible_index(m1[None]), visible_index(m2[None])
    a, b = _decoder_input(dec, latent, i1), _decoder_input(dec, latent, i2)
    D = a.shape[-1]
    tok_a = a.gather(1, i1[..., None].expand(-1, -1, D))  # in unit order
    tok_b = b.gather(1, i2[..., None].expand(-1, -1, D))
    torch.testing.assert_close(tok_a, tok_b)
    assert tok_a.std(1).min() > 0  # different tokens, not one constant
    dropped = m1.flatten().bool()
    torch.testing.assert_close(
        a[0, dropped], dec.mask_token.view(1, D).expand(192, D))
