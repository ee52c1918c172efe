"""Sparse convolutions on visible tokens equal dense convolutions of the
zero-filled map read at the active sites (values and gradients)."""
import pytest
import torch

from mmum.models.layers.sparse_conv import (build_neighbour_index,
                                            build_strided_index,
                                            sparse_strided_conv,
                                            submanifold_dwconv3x3)


pytestmark = pytest.mark.usefixtures('one_thread')


def _random_sites(H, W, ratio, seed, unit=1):
    """Active sites (row-major coords) of a random mask of ``unit``-cells."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(H // unit, W // unit, generator=g) >= ratio
    keep[0, -1] = True
    keep = keep.repeat_interleave(unit, 0).repeat_interleave(unit, 1)
    return keep.nonzero()


def _zero_filled(x, coords, hw):
    B, N, C = x.shape
    dense = x.new_zeros(B, C, *hw)
    dense[:, :, coords[:, 0], coords[:, 1]] = x.transpose(1, 2)
    return dense


def _grads(out, g, *tensors):
    return torch.autograd.grad((out * g).sum(), tensors)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel,unit,ratio,seed', [
    (2, 1, 0.5, 0),  # partly active cells: missing inputs count as zero
    (4, 1, 0.8, 1),
    (2, 2, 0.75, 2),  # whole cells, as under GreenMIM's unit mask
    (8, 8, 0.75, 3),  # Twins-L stage-1 spatial reduction
])
def test_strided_conv_equals_dense(kernel, unit, ratio, seed):
    torch.manual_seed(seed)
    B, C, C_out, hw = 3, 5, 7, (16, 24)
    coords = _random_sites(*hw, ratio, seed, unit)
    x = torch.randn(B, len(coords), C, requires_grad=True)
    conv = torch.nn.Conv2d(C, C_out, kernel, stride=kernel)
    index, out_coords, out_hw = build_strided_index(coords, hw, kernel)
    out = sparse_strided_conv(x, index, conv.weight, conv.bias)

    dense = conv(_zero_filled(x, coords, hw))  # B, C_out, h, w
    # output sites: exactly the cells with an active input, row-major
    cells = torch.zeros(out_hw, dtype=torch.bool)
    cells[coords[:, 0] // kernel, coords[:, 1] // kernel] = True
    assert torch.equal(out_coords, cells.nonzero())
    ref = dense[:, :, out_coords[:, 0], out_coords[:, 1]].transpose(1, 2)
    assert out.shape == (B, len(out_coords), C_out)
    _close(out, ref)

    g = torch.randn_like(out)
    params = (x, conv.weight, conv.bias)
    for a, b in zip(_grads(out, g, *params), _grads(ref, g, *params)):
        _close(a, b)


@pytest.mark.parametrize('unit,ratio,seed', [(1, 0.5, 0), (1, 0.85, 1),
                                             (4, 0.75, 2), (8, 0.6, 3)])
def test_submanifold_dwconv_equals_dense(unit, ratio, seed):
    torch.manual_seed(seed)
    B, C, hw = 2, 6, (16, 24)
    coords = _random_sites(*hw, ratio, seed, unit)
    x = torch.randn(B, len(coords), C, requires_grad=True)
    conv = torch.nn.Conv2d(C, C, 3, padding=1, groups=C)
    index = build_neighbour_index(coords, hw)
    out = submanifold_dwconv3x3(x, index, conv.weight, conv.bias)

    dense = conv(_zero_filled(x, coords, hw))
    ref = dense[:, :, coords[:, 0], coords[:, 1]].transpose(1, 2)
    _close(out, ref)

    g = torch.randn_like(out)
    params = (x, conv.weight, conv.bias)
    for a, b in zip(_grads(out, g, *params), _grads(ref, g, *params)):
        _close(a, b)


def test_submanifold_dwconv_double_precision_gradcheck():
    coords = _random_sites(6, 5, 0.5, 0)
    index = build_neighbour_index(coords, (6, 5))
    x = torch.randn(2, len(coords), 3, dtype=torch.double, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: submanifold_dwconv3x3(t[0], index, t[1], t[2]), (x, w, b))


def test_submanifold_dwconv_mixed_precision_dtypes():
    """bf16 tokens with fp32 weights (as under AMP): output in the token
    dtype, weight gradients in the weight dtype."""
    coords = _random_sites(8, 8, 0.5, 0)
    index = build_neighbour_index(coords, (8, 8))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(2, len(coords), 4).bfloat16().requires_grad_()
    out = submanifold_dwconv3x3(x, index, conv.weight, conv.bias)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.bfloat16


def test_neighbour_index_has_no_token_loop():
    """The index of a 56x56 map with a 25 % mask builds with tensor ops
    (this would time out with a Python loop over tokens on a big map)."""
    coords = _random_sites(224, 224, 0.75, 0, unit=8)
    index = build_neighbour_index(coords, (224, 224))
    assert index.shape == (len(coords), 9)
    assert torch.equal(index[:, 4], torch.arange(len(coords)))


def test_bad_inputs():
    coords = _random_sites(8, 8, 0.5, 0)
    with pytest.raises(ValueError, match='multiple of the kernel'):
        build_strided_index(coords, (8, 8), 3)
    with pytest.raises(ValueError, match='inside the 4x4 map'):
        build_neighbour_index(coords, (4, 4))
    with pytest.raises(ValueError, match='integer'):
        build_neighbour_index(coords.float(), (8, 8))
    index, _, _ = build_strided_index(coords, (8, 8), 2)
    with pytest.raises(ValueError, match='channels'):
        sparse_strided_conv(torch.randn(1, len(coords), 3), index,
                            torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match='depth-wise'):
        submanifold_dwconv3x3(torch.randn(1, len(coords), 3),
                              build_neighbour_index(coords, (8, 8)),
                              torch.randn(3, 3, 3, 3))
