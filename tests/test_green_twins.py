"""GreenTwins (visible-only Twins-SVT) against mmpretrain's SVT and against
a dense reference on the zero-filled map."""
import functools

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import SVT
from mmpretrain.models.backbones.twins import LSAEncoderLayer

from mmum.models.backbones.green_twins import GreenTwins

TINY = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
            num_heads=[1, 2, 4, 8], patch_sizes=[4, 2, 2, 2],
            strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])


pytestmark = pytest.mark.usefixtures('one_thread')


@functools.lru_cache()
def _pair(seed=0):
    """A GreenTwins and an mmpretrain SVT with the same random weights
    (cached: tests only read them)."""
    torch.manual_seed(seed)
    kw = dict(arch=TINY, out_indices=(0, 1, 2, 3), qkv_bias=True,
              norm_after_stage=True)
    green = GreenTwins(**kw)
    for p in green.parameters():  # non-trivial LN / bias values too
        p.data.add_(0.05 * torch.randn_like(p))
    svt = SVT(**kw)
    svt.load_state_dict(green.state_dict(), strict=True)
    return green.eval(), svt.eval()


def _unit_mask(h, w, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(h, w, generator=g) < ratio
    mask[seed % h, 0] = False
    return mask


def _fill(tokens, vis):
    """Zero-filled dense map (B, C, H, W) of tokens (B, N, C) at vis (H, W)."""
    B, N, C = tokens.shape
    dense = tokens.new_zeros(B, C, *vis.shape)
    dense[:, :, vis] = tokens.transpose(1, 2)
    return dense


def _attend(q, k, v, nh, scale):
    """Plain multi-head softmax attention, q (Nq, C), k/v (Nk, C)."""
    q, k, v = (t.view(t.shape[0], nh, -1).transpose(0, 1) for t in (q, k, v))
    a = ((q @ k.transpose(1, 2)) * scale).softmax(-1)
    return (a @ v).transpose(0, 1).flatten(1)


def _reference(model, img, keep):
    """Dense reference of every stage's visible tokens: convolutions on the
    zero-filled map, LSA over the visible tokens of each window (a loop over
    windows), GSA over the sub-sampled cells that hold visible tokens."""
    f = model.total_stride
    vis = keep.repeat_interleave(f, 0).repeat_interleave(f, 1)  # pixels
    x = img * vis
    outs = []
    for i in range(model.num_stage):
        s = model.strides[i]
        vis = F.max_pool2d(vis[None].float(), s)[0] > 0  # any input visible
        embed = model.patch_embeds[i]
        x = embed.projection(x)[:, :, vis].transpose(1, 2)  # B, N, C
        x = embed.norm(x)
        B, N, C = x.shape
        rows, cols = vis.nonzero().unbind(1)
        for j, blk in enumerate(model.stages[i]):
            h = blk.norm1(x)
            a = blk.attn
            nh = a.num_heads
            y = torch.zeros_like(h)
            if isinstance(blk, LSAEncoderLayer):
                ws = a.window_size
                win = (rows // ws) * 1000 + cols // ws
                for b in range(B):
                    for w in win.unique():
                        ids = (win == w).nonzero().squeeze(1)
                        q, k, v = a.qkv(h[b, ids]).chunk(3, -1)
                        y[b, ids] = _attend(q, k, v, nh, a.scale)
                y = a.proj(y)
            else:
                sr = model.sr_ratios[i]
                kv_src = h
                if sr > 1:
                    cells = F.max_pool2d(vis[None].float(), sr)[0] > 0
                    kv_src = a.sr(_fill(h, vis))[:, :, cells].transpose(1, 2)
                    kv_src = a.norm(kv_src)
                for b in range(B):
                    k, v = a.kv(kv_src[b]).chunk(2, -1)
                    y[b] = _attend(a.q(h[b]), k, v, nh, (C // nh)**-0.5)
                y = a.proj(y)
            x = x + y
            x = x + blk.ffn(blk.norm2(x))
            if j == 0:
                m = _fill(x, vis)
                peg = model.position_encodings[i].proj
                x = (peg(m) + m)[:, :, vis].transpose(1, 2)
        x = getattr(model, f'norm_after_stage{i}')(x)
        outs.append(x)
        x = _fill(x, vis)
    return outs


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_all_visible_equals_mmpretrain_svt():
    green, svt = _pair()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = green(img, torch.zeros(7, 7, dtype=torch.bool))
        ref = svt(img)
        dense = green(img)  # no mask: SVT's own forward
    assert len(ours) == len(ref) == 4
    for o, r, d in zip(ours, ref, dense):
        _close(o, r.flatten(2).transpose(1, 2))
        assert torch.equal(d, r)


@pytest.mark.parametrize('ratio,seed', [(0.75, 0), (0.5, 1), (0.9, 2)])
def test_masked_equals_dense_reference(ratio, seed):
    green, _ = _pair()
    torch.manual_seed(seed)
    img = torch.randn(2, 3, 224, 224)
    mask = _unit_mask(7, 7, ratio, seed)
    with torch.no_grad():
        ours = green(img, mask)
        ref = _reference(green, img, ~mask)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape == r.shape, f'stage {i}'
        _close(o, r)
    # last stage: token k is the k-th visible unit
    assert ours[-1].shape[1] == int((~mask).sum())


def test_first_block_sees_a_quarter_of_the_tokens():
    green, _ = _pair()
    seen = []
    hook = green.stages[0][0].norm1.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape[1]))
    mask = torch.ones(7, 7, dtype=torch.bool)
    mask.view(-1)[torch.randperm(49)[:12]] = False  # GreenMIM keeps 12 of 49
    with torch.no_grad():
        green(torch.randn(1, 3, 224, 224), mask)
    hook.remove()
    assert seen == [12 * 8 * 8]  # 768 of the image's 56 * 56 = 3136


def test_gradients_reach_every_parameter():
    green, _ = _pair()
    model = GreenTwins(arch=TINY, out_indices=(3, ))
    model.load_state_dict(green.state_dict(), strict=False)
    out = model(torch.randn(2, 3, 224, 224), _unit_mask(7, 7, 0.75, 0))[-1]
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    # norm_after_stage0-2 are Identity here; every real parameter learns
    assert not missing, missing


def test_bad_inputs():
    green, _ = _pair()
    img = torch.randn(1, 3, 224, 224)
    with pytest.raises(ValueError, match='divisible by the mask unit.*224'):
        green(torch.randn(1, 3, 200, 200), torch.zeros(6, 6, dtype=bool))
    with pytest.raises(ValueError, match=r'shape \(7, 7\)'):
        green(img, torch.zeros(7, 7))
    with pytest.raises(ValueError, match='hides every unit'):
        green(img, torch.ones(7, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match='multiple of window size 7.*'
                       r'e\.g\. 224x224'):
        green(torch.randn(1, 3, 256, 256), torch.zeros(8, 8, dtype=bool))
    assert green.suggest_size(250) == 224 and green.suggest_size(400) == 448
    assert green.fits(448) and not green.fits(256)
    arch = dict(TINY, patch_sizes=[7, 3, 3, 3])
    with pytest.raises(ValueError, match='patch_sizes == strides'):
        GreenTwins(arch=arch)
