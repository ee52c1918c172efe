"""The CPB window attention keeps its tables on the model's device and hands
4-D tensors to ``scaled_dot_product_attention`` (issue 25, finding 3)."""
import math

import pytest
import torch
import torch.nn.functional as F

import mmum  # noqa: F401
from mmum.models.layers.cpb_window_attention import (CPBShiftWindowMSA,
                                                     CPBWindowMSA, LogCPB)
from mmum.registry import MODELS

from _sync_count import count_syncs

SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])


def reference_window_msa(attn, x, mask):
    """The former formulation: 5-D q/k/v of (B, nW, heads, N, d) with the
    (nW, heads, N, N) bias + mask broadcast over the images; the bias index
    built here from scratch."""
    B_, N, C = x.shape
    w = math.isqrt(N)
    q, k, v = attn.qkv(x).reshape(B_, N, 3, attn.num_heads, -1).permute(
        2, 0, 3, 1, 4)
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')
    c = torch.stack([ys.flatten(), xs.flatten()])
    rel = c[:, :, None] - c[:, None, :] + w - 1
    table = attn.cpb.mlp(LogCPB.log_coords(w).to(x.dtype))
    bias = table[rel[0] * (2 * w - 1) + rel[1]].permute(2, 0, 1)
    if mask is not None:
        nW = mask.shape[0]
        q, k, v = (t.view(B_ // nW, nW, *t.shape[1:]) for t in (q, k, v))
        bias = bias + mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.reshape(B_, attn.num_heads, N, -1).transpose(1, 2).reshape(
        B_, N, C)
    return attn.proj(out)


@pytest.mark.parametrize('shift', [0, 2])
@pytest.mark.parametrize('window', [4, 3])
def test_4d_attention_equals_the_5d_one_in_float64(window, shift):
    torch.manual_seed(0)
    blk = CPBShiftWindowMSA(embed_dims=16, num_heads=2, window_size=window,
                            shift_size=shift, cpb_hidden_dims=8).double()
    x = torch.randn(3, (2 * window)**2, 16, dtype=torch.float64)
    side = 2 * window
    mask = blk.get_attn_mask((side, side), window, shift, x.device)
    q = F.pad(x.view(3, side, side, 16), (0, 0))
    if shift:
        q = torch.roll(q, (-shift, -shift), (1, 2))
    windows = blk.window_partition(q, window).view(-1, window**2, 16)
    got = blk.w_msa(windows, mask=mask)
    want = reference_window_msa(blk.w_msa, windows, mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sdpa_gets_4d_tensors_in_every_swin_block(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.dim(), k.dim(), v.dim(), attn_mask.dim()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    model = MODELS.build(dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                              window_size=4))
    model(torch.randn(2, 3, 64, 64))
    assert len(seen) == 8 and all(s == (4, 4, 4, 4) for s in seen), seen


def test_bias_tables_are_nonpersistent_buffers_on_the_device():
    model = MODELS.build(dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                              window_size=4, pad_small_map=False))
    keys = set(model.state_dict())
    assert not [k for k in keys if '.cpb.' in k and 'mlp' not in k]
    cpb = model.stages[0].blocks[0].attn.w_msa.cpb
    assert {n for n, _ in cpb.named_buffers()} == {'coords_4', 'index_4'}
    model.to('meta')
    # a forward reads the tables where they are: no host-device copy; the
    # last stage (2x2 map) clamps the window and makes its tables on meta
    with count_syncs() as log:
        model(torch.empty(2, 3, 64, 64, device='meta'))
    assert not log.syncs and not log.transfers, log.report()
    last = model.stages[3].blocks[0].attn.w_msa.cpb
    assert last.index_2.device.type == 'meta'
    assert set(model.state_dict()) == keys


def test_checkpoints_without_the_buffers_load_strictly():
    cfg = dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY, window_size=4)
    a, b = MODELS.build(cfg), MODELS.build(cfg)
    a.eval(), b.eval()  # (mmpretrain's Swin.train returns None)
    a(torch.randn(1, 3, 32, 32))  # tables of more windows made in `a`
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_log_cpb_table_and_index():
    cpb = LogCPB(num_heads=2, hidden_dims=8, window=3)
    coords, index = cpb.tables(3)
    assert coords.shape == (25, 2) and index.shape == (9, 9)
    # pair (token 0, token 8): offset (-2, -2) is the table's first row
    assert index[0, 8] == 0 and index[8, 0] == 24 and index[4, 4] == 12
    torch.testing.assert_close(coords, LogCPB.log_coords(3))
    assert CPBWindowMSA(8, 2, window_size=(5, 5)).cpb.tables(5)[1].shape \
        == (25, 25)


def test_cpu_inference_takes_the_fused_kernel():
    """With 4-D inputs (bias included) SDPA runs its fused CPU kernel in
    every block (the 5-D formulation fell back to the math kernel)."""
    model = MODELS.build(dict(type='mmum.CPBSwinTransformer', arch=SWIN_TINY,
                              window_size=4))
    model.eval()
    with torch.no_grad(), torch.profiler.profile() as prof:
        model(torch.randn(2, 3, 64, 64))
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get('aten::_scaled_dot_product_flash_attention_for_cpu') == 8
    assert 'aten::_scaled_dot_product_attention_math' not in ops
