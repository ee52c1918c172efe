"""One byte buffer carries a plan of mixed-dtype tensors to the device."""
from typing import NamedTuple

import pytest
import torch

from mmum.models.layers.host_plan import pack_plan, plan_to_device


class _Pair(NamedTuple):
    a: torch.Tensor
    b: object


def _tree():
    return dict(mask=torch.tensor([[True, False, True]]),
                index=torch.arange(5).view(5, 1)[::2],  # not contiguous
                empty=torch.zeros(0, 3, dtype=torch.int64),
                scalar=torch.tensor(7, dtype=torch.int32),
                pos=torch.randn(1, 4, 2, dtype=torch.float32),
                stages=[_Pair(torch.arange(3, dtype=torch.int16), None),
                        _Pair(torch.ones(2, 2), {3: 'x'})])


def test_round_trip_keeps_values_dtypes_and_structure():
    tree = _tree()
    back = pack_plan(tree).to('cpu')
    flat, got = [], []
    for k in tree:
        flat.append(tree[k])
        got.append(back[k])
    for x, y in zip(flat[:-1], got[:-1]):
        assert y.dtype == x.dtype and torch.equal(y, x)
    assert isinstance(back['stages'][1], _Pair)
    assert back['stages'][1].b == {3: 'x'} and back['stages'][0].b is None
    assert torch.equal(back['stages'][0].a, tree['stages'][0].a)
    # every tensor a view of one buffer, each at a multiple of 8 bytes
    tensors = [back['mask'], back['index'], back['pos'],
               back['stages'][1].a]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert all(t.storage_offset() * t.element_size() % 8 == 0
               for t in tensors)


def test_meta_device_gets_views_of_one_copied_buffer():
    out = plan_to_device(_tree(), 'meta')
    assert out['pos'].device.type == 'meta'
    assert out['index'].shape == (3, 1) and out['mask'].dtype == torch.bool
    assert plan_to_device(tree := _tree(), 'cpu') is tree  # nothing to move


def test_refuses_device_tensors():
    with pytest.raises(ValueError, match='planned on the host'):
        pack_plan(dict(a=torch.zeros(2, device='meta')))
