"""The 2x2 stride-2 patch-merging conv computed on the tokens
(:func:`mmum.models.layers.merge_2x2`) equals the convolution it replaces,
in both of its gather orders, on even and odd maps, values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import PatchEmbed

from mmum.models.backbones.pvt import PVTStage
from mmum.models.layers import ConvPatchMerging, merge_2x2

pytestmark = pytest.mark.usefixtures('one_thread')


def conv_reference(x, hw, weight, bias):
    """The convolution on the NCHW map, zero-padded bottom/right."""
    B, _, C = x.shape
    m = x.transpose(1, 2).reshape(B, C, *hw)
    m = F.pad(m, (0, hw[1] % 2, 0, hw[0] % 2))
    y = F.conv2d(m, weight, bias, stride=2)
    return y.flatten(2).transpose(1, 2), tuple(y.shape[-2:])


# (B, C, C_out, H, W): the first two reorder the weight (it is the smaller
# tensor), the last two reorder the input; odd sides pad
CASES = [(2, 4, 8, 8, 8), (3, 3, 5, 7, 5), (1, 16, 32, 2, 2),
         (1, 12, 6, 3, 4)]


@pytest.mark.parametrize('B,C,Co,H,W', CASES)
def test_merge_2x2_equals_the_conv(B, C, Co, H, W):
    torch.manual_seed(0)
    x = torch.randn(B, H * W, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(Co, C, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(Co, dtype=torch.float64, requires_grad=True)
    weight_reordered = w.numel() < B * (H + H % 2) * (W + W % 2) * C
    assert weight_reordered == (CASES.index((B, C, Co, H, W)) < 2)
    y, hw = merge_2x2(x, (H, W), w, b)
    ref, ref_hw = conv_reference(x, (H, W), w, b)
    assert hw == ref_hw == ((H + 1) // 2, (W + 1) // 2)
    assert y.shape == (B, hw[0] * hw[1], Co)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_merge_2x2_bad_shapes_name_them():
    x = torch.randn(2, 12, 4)
    with pytest.raises(ValueError, match=r'hw=\(3, 5\)'):
        merge_2x2(x, (3, 5), torch.randn(8, 4, 2, 2))
    with pytest.raises(ValueError, match=r'weight \(8, 3, 2, 2\)'):
        merge_2x2(x, (3, 4), torch.randn(8, 3, 2, 2))
    with pytest.raises(ValueError, match=r'bias \(7,\)'):
        merge_2x2(x, (3, 4), torch.randn(8, 4, 2, 2), torch.randn(7))
    with pytest.raises(ValueError, match=r'tokens \(2, 3, 4, 4\)'):
        merge_2x2(x.view(2, 3, 4, 4), (3, 4), torch.randn(8, 4, 2, 2))


def test_conv_patch_merging_is_norm_then_conv():
    torch.manual_seed(0)
    m = ConvPatchMerging(6, 12).double()
    x = torch.randn(2, 5 * 6, 6, dtype=torch.float64)
    y, hw = m(x, (5, 6))
    ref, ref_hw = conv_reference(m.norm(x), (5, 6), m.proj.weight,
                                 m.proj.bias)
    assert hw == ref_hw == (3, 3)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_pvt_stage_merge_is_its_patch_embed():
    """PVT's stage merge keeps mmcv's PatchEmbed (and its state-dict keys)
    but runs its conv on the tokens: same output as the module itself."""
    torch.manual_seed(0)
    stage = PVTStage(8, 16, depth=0, num_heads=2, mlp_ratio=4.,
                     drop_paths=[]).double()
    assert isinstance(stage.downsample, PatchEmbed)
    for H, W in [(6, 4), (5, 7)]:
        x = torch.randn(2, H * W, 8, dtype=torch.float64)
        y, hw = stage(x, (H, W), 1)
        ref, ref_hw = stage.downsample(
            x.transpose(1, 2).reshape(2, 8, H, W))
        assert hw == tuple(ref_hw)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
