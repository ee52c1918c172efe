import numpy as np
import pytest
from scipy import stats

from mmum.datasets.transforms import UniformMasking


def draw(t, size=256, n=1):
    img = np.zeros((size, size, 3), np.uint8)
    return [t.transform(dict(img=img)) for _ in range(n)]


def cells(mask):
    h, w = mask.shape
    return mask.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(
        h // 2, w // 2, 4)


@pytest.mark.parametrize('sampling', ['iid', 'balanced'])
@pytest.mark.parametrize('size', [256, 224, 64, 320])
def test_one_visible_per_cell_and_secondary_count(sampling, size):
    t = UniformMasking(sampling=sampling)
    for r in draw(t, size, n=50):
        mask, sec = r['mask'], r['secondary_mask']
        assert mask.shape == (size // 16, size // 16)
        assert (cells(1 - mask).sum(-1) == 1).all()
        n_visible = (size // 32)**2
        assert (mask == 0).sum() == n_visible
        assert sec.sum() == round(n_visible * 0.25)
        # secondary-masked patches are visible ones
        assert not (sec.astype(bool) & mask.astype(bool)).any()


def test_counts_at_256():
    r = draw(UniformMasking())[0]
    assert (r['mask'] == 0).sum() == 64 and r['secondary_mask'].sum() == 16


def test_iid_positions_uniform_chi2():
    np.random.seed(0)
    t = UniformMasking(sampling='iid')
    counts = np.zeros(4)
    for r in draw(t, 256, n=300):
        counts += np.bincount(cells(1 - r['mask']).argmax(-1).ravel(),
                              minlength=4)
    p = stats.chisquare(counts).pvalue
    assert p > 1e-3, (counts, p)
    # per-cell independence: a cell's position is uniform over draws
    first = [cells(1 - r['mask'])[0, 0].argmax() for r in draw(t, 64, 400)]
    assert stats.chisquare(np.bincount(first, minlength=4)).pvalue > 1e-3


def test_balanced_positions_exact():
    t = UniformMasking(sampling='balanced')
    for r in draw(t, 256, n=50):
        counts = np.bincount(cells(1 - r['mask']).argmax(-1).ravel(),
                             minlength=4)
        assert (counts == 16).all()
    # 3x3 cells: 9 = 2*4 + 1 -> as equal as possible
    for r in draw(t, 96, n=20):
        counts = np.bincount(cells(1 - r['mask']).argmax(-1).ravel(),
                             minlength=4)
        assert sorted(counts) == [2, 2, 2, 3]


def test_reproducible_under_seed():
    from mmengine.runner import set_random_seed
    t = UniformMasking()
    set_random_seed(7)
    a = draw(t, n=3)
    set_random_seed(7)
    b = draw(t, n=3)
    for x, y in zip(a, b):
        assert (x['mask'] == y['mask']).all()
        assert (x['secondary_mask'] == y['secondary_mask']).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(secondary_ratio=1.0), r'secondary_ratio.*\[0, 1\).*1\.0'),
    (dict(secondary_ratio=-0.1), r'secondary_ratio.*-0\.1'),
    (dict(sampling='grid'), r"sampling.*'iid', 'balanced'.*'grid'"),
    (dict(patch_size=0), r'patch_size.*0'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniformMasking(**kwargs)


def test_bad_image_size():
    with pytest.raises(ValueError, match=r'multiples of .*32 px.*250x256'):
        UniformMasking().transform(dict(img=np.zeros((250, 256, 3))))


def test_odd_grid():
    with pytest.raises(ValueError, match=r'grid must be even.*3x4'):
        UniformMasking().sample(3, 4)


def test_pack_inputs_carries_masks():
    from mmpretrain.datasets import PackInputs
    r = draw(UniformMasking())[0]
    r['img'] = np.zeros((256, 256, 3), np.uint8)
    packed = PackInputs(algorithm_keys=['secondary_mask']).transform(r)
    ds = packed['data_samples']
    assert tuple(ds.mask.shape) == (16, 16)
    assert ds.secondary_mask.sum() == 16
