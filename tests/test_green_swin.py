"""GreenSwinTransformer / GroupWindowAttention against mmpretrain's Swin."""
import functools

import pytest
import torch
from mmpretrain.models import SwinTransformer

from mmum.models.backbones.green_swin import GreenSwinTransformer
from mmum.models.layers.group_window_attention import (GroupWindowAttention,
                                                       build_group_plan)

ARCH = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


pytestmark = pytest.mark.usefixtures('one_thread')


@functools.lru_cache()
def _pair(seed=0, window_size=7):
    """A GreenSwin and an mmpretrain Swin with the same random weights
    (cached: tests only read them)."""
    torch.manual_seed(seed)
    kw = dict(arch=ARCH, img_size=224, window_size=window_size,
              out_indices=(0, 1, 2, 3))
    green = GreenSwinTransformer(**kw)
    for p in green.parameters():  # non-trivial LN / bias values too
        p.data.add_(0.02 * torch.randn_like(p))
    swin = SwinTransformer(drop_path_rate=0., **kw)
    swin.load_state_dict(green.state_dict(), strict=True)
    green.eval()  # (SwinTransformer.train returns None)
    swin.eval()
    return green, swin


def _unit_mask(h, w, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(h, w, generator=g) < ratio
    mask[0, 0] = False
    return mask


def _ref_window_attention(msa, x, coords, hw, ws, shift):
    """Ordinary Swin window attention (mmpretrain's bias index, cyclic shift
    and region mask) over only the visible tokens of each window."""
    B, N, C = x.shape
    H, W = hw
    nh = msa.num_heads
    rolled = (coords - shift) % torch.tensor([H, W])  # position after roll

    def region(p, L):  # mmpretrain's get_attn_mask slices
        return 0 if shift == 0 or p < L - ws else (1 if p < L - shift else 2)

    keys = [(int(r) // ws, int(c) // ws, region(int(r), H), region(int(c), W))
            for r, c in rolled]
    out = torch.empty_like(x)
    for key in set(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        n = len(idx)
        qkv = msa.qkv(x[:, idx]).reshape(B, n, 3, nh, C // nh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * msa.scale) @ k.transpose(-2, -1)  # B, nh, n, n
        inwin = (rolled[idx] % ws)
        p = inwin[:, 0] * ws + inwin[:, 1]
        rpi = msa.relative_position_index[p][:, p]
        bias = msa.relative_position_bias_table[rpi.reshape(-1)]
        attn = attn + bias.view(n, n, nh).permute(2, 0, 1)
        o = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, n, C)
        out[:, idx] = msa.proj(o)
    return out


def _ref_encoder(swin, img, mask):
    """Visible-only Swin written densely: blocks on the visible tokens with
    the reference attention, merging by mmcv's own PatchMerging (Unfold) on
    a dense map with zeros at masked positions."""
    x, hw = swin.patch_embed(img)
    f = 2**(len(swin.stages) - 1)
    keep = (~mask).repeat_interleave(f, 0).repeat_interleave(f, 1)
    outs = []
    for i, stage in enumerate(swin.stages):
        vis = [r * hw[1] + c for r in range(hw[0]) for c in range(hw[1])
               if keep[r, c]]  # row-major positions, by a plain loop
        vis = torch.tensor(vis)
        coords = torch.stack([vis // hw[1], vis % hw[1]], 1)
        xv = x[:, vis]
        for blk in stage.blocks:
            ws = blk.attn.window_size
            shift = blk.attn.shift_size if min(hw) > ws else 0
            xv = xv + _ref_window_attention(blk.attn.w_msa, blk.norm1(xv),
                                            coords, hw, ws, shift)
            xv = blk.ffn(blk.norm2(xv), identity=xv)
        outs.append(getattr(swin, f'norm{i}')(xv))
        x = xv.new_zeros(xv.shape[0], hw[0] * hw[1], xv.shape[-1])
        x[:, vis] = xv
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
            keep = keep[::2, ::2]
    return outs


def test_state_dict_is_swin_both_ways():
    green, swin = _pair()
    assert list(green.state_dict()) == list(swin.state_dict())
    green.load_state_dict(swin.state_dict(), strict=True)


@torch.no_grad()
def test_all_visible_equals_mmpretrain_swin():
    green, swin = _pair()
    img = torch.randn(2, 3, 224, 224)
    dense = swin(img)
    sparse = green(img, torch.zeros(7, 7, dtype=torch.bool))
    no_mask = green(img)
    for d, s, n in zip(dense, sparse, no_mask):
        B, C, H, W = d.shape
        torch.testing.assert_close(
            s, d.flatten(2).transpose(1, 2), atol=1e-5, rtol=0)
        torch.testing.assert_close(n, d, atol=0, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize('stage,shift', [(0, 0), (0, 3), (1, 0), (1, 3),
                                         (2, 0), (3, 0)])
def test_group_attention_equals_per_window_reference(stage, shift):
    torch.manual_seed(stage)
    msa = GroupWindowAttention(32 << stage, (7, 7), 1 << stage).eval()
    for p in msa.parameters():  # weights of trained-Swin scale
        p.data.normal_(0, 0.05)
    msa.relative_position_bias_table.data.normal_(0, 1)  # bias matters
    side = 56 >> stage
    mask = _unit_mask(7, 7, 0.75, seed=10 + stage)
    f = side // 7
    coords = (~mask).repeat_interleave(f, 0).repeat_interleave(f, 1).nonzero()
    x = torch.randn(2, len(coords), msa.embed_dims)
    plan = build_group_plan(coords, 7, shift, msa.embed_dims)
    out = msa(x, plan=plan)
    ref = _ref_window_attention(msa, x, coords, (side, side), 7, shift)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize('seed', [0, 1])
def test_masked_encoder_equals_visible_only_reference(seed):
    green, swin = _pair(seed=seed)
    img = torch.randn(2, 3, 224, 224)
    mask = _unit_mask(7, 7, 0.75, seed=seed)
    outs = green(img, mask)
    refs = _ref_encoder(swin, img, mask)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=0)
    # last stage: token k is the k-th visible unit in row-major order
    assert outs[-1].shape[1] == int((~mask).sum())


def test_bad_inputs_raise_clear_errors():
    green, _ = _pair()
    with pytest.raises(ValueError, match='divisible by the mask unit'):
        green(torch.randn(1, 3, 200, 224), torch.zeros(6, 7, dtype=bool))
    with pytest.raises(ValueError, match='mask must be a bool tensor'):
        green(torch.randn(1, 3, 224, 224), torch.zeros(6, 7, dtype=bool))
    with pytest.raises(ValueError, match='window_size'):
        green(torch.randn(1, 3, 192, 192), torch.zeros(6, 6, dtype=bool))
    with pytest.raises(ValueError, match='keep at least one'):
        green(torch.randn(1, 3, 224, 224), torch.ones(7, 7, dtype=bool))


@torch.no_grad()
def test_large_window_covers_small_stages():
    """Window 14 at 224 px (Swin-L recipe): stage 3 is one window and stage
    4 (7x7) fits in one; outputs still match the per-window reference."""
    green, swin = _pair(window_size=14)
    img = torch.randn(1, 3, 224, 224)
    mask = _unit_mask(7, 7, 0.75, seed=3)
    for o, r in zip(green(img, mask), _ref_encoder(swin, img, mask)):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=0)
