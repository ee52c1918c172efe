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


@pytest.mark.parametrize('sampling', ['released', 'iid', 'balanced'])
@pytest.mark.parametrize('size', [256, 224, 64, 320])
def test_one_visible_per_cell_and_secondary_count(sampling, size):
    t = UniformMasking(sampling=sampling)
    for r in draw(t, size, n=50):
        mask, sec = r['mask'], r['secondary_mask']
        assert mask.shape == (size // 16, size // 16)
        assert (cells(1 - mask).sum(-1) == 1).all()
        n_visible = (size // 32)**2
        assert (mask == 0).sum() == n_visible
        # the release keeps int(0.75 n) (rounded down), masks the rest
        assert sec.sum() == n_visible - int(n_visible * 0.75)
        # secondary-masked patches are visible ones
        assert not (sec.astype(bool) & mask.astype(bool)).any()


# (side px, cells n, secondary count n - floor(0.75 n)) worked out by hand
@pytest.mark.parametrize('size,n,k', [(192, 36, 9), (224, 49, 13),
                                      (256, 64, 16), (288, 81, 21),
                                      (320, 100, 25), (384, 144, 36),
                                      (448, 196, 49), (512, 256, 64)])
def test_secondary_count_as_released(size, n, k):
    """The release keeps ``int(n * (1 - 0.25))`` of the n visible patches
    (UM-MAE Swin/PVT ``forward_encoder``): at 224 px 49 - 36 = 13, where
    ``round(0.25 * 49)`` would give 12."""
    t = UniformMasking()
    assert t.num_secondary(n) == k
    for r in draw(t, size, n=3):
        assert (r['mask'] == 0).sum() == n
        assert r['secondary_mask'].sum() == k


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


def position_counts(t, cells_per_side, n):
    """(n, 4): per draw, how many cells keep each position visible."""
    g = 2 * cells_per_side
    return np.stack([
        np.bincount(cells(1 - t.sample(g, g)[0]).argmax(-1).ravel(),
                    minlength=4) for _ in range(n)])


def chi2_pvalue(observed, expected_p, min_expected=5):
    """Chi-square goodness of fit over integer counts, tails pooled so that
    every bin expects at least ``min_expected``."""
    expected = expected_p * observed.sum()
    obs, exp, o, e = [], [], 0, 0
    for k in range(len(expected)):
        o, e = o + observed[k], e + expected[k]
        if e >= min_expected:
            obs.append(o)
            exp.append(e)
            o, e = 0, 0
    obs[-1] += o
    exp[-1] += e
    exp = np.array(exp) * sum(obs) / sum(exp)
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize('side', [8, 3])  # 256 px (64 cells), 96 px (9)
def test_released_counts_are_hypergeometric(side):
    """Issue 13, finding 5: the release draws each image's n cell positions
    without replacement from a shuffled pool holding each position
    ceil(n/2) times, so a position's count per image is hypergeometric."""
    np.random.seed(0)
    n = side * side
    k = -(-n // 2)
    exact = stats.hypergeom(M=4 * k, n=k, N=n)  # population, successes, draws
    counts = position_counts(UniformMasking(sampling='released'), side, 4000)
    assert (counts.sum(1) == n).all()
    # one position per image keeps the draws independent
    c0 = counts[:, 0]
    assert abs(c0.mean() - n / 4) < 4 * exact.std() / np.sqrt(len(c0))
    # variance: 6.05 at 256 px (std 2.46), against 12 for iid and 0 for
    # balanced; the sample variance's std is about var * sqrt(2 / N)
    assert abs(c0.var(ddof=1) / exact.var() - 1) < 4 * np.sqrt(2 / len(c0))
    observed = np.bincount(c0, minlength=n + 1)
    assert chi2_pvalue(observed, exact.pmf(np.arange(n + 1))) > 1e-3
    if side == 8:
        assert abs(exact.std() - 2.46) < 0.01
    # every position is as likely as the others
    assert stats.chisquare(counts.sum(0)).pvalue > 1e-3


def test_released_draws_equal_the_released_generator():
    """Same numpy seed, same masks as the release's generator, written here
    from its description: candidates of one dropped-pattern per position
    (visible = 0), appended in groups of 4 until they are twice the cells,
    rows shuffled, the first n cells taken row-major."""
    def released(h, w):
        n = h * w // 4
        pool = []
        while len(pool) < 2 * n:
            for j in range(4):
                pool.append(np.where(np.arange(4) == j, 0, 1))
        pool = np.array(pool)
        np.random.shuffle(pool)
        m = pool[:n].reshape(h // 2, w // 2, 2, 2)
        return m.transpose(0, 2, 1, 3).reshape(h, w)

    t = UniformMasking(sampling='released')
    for h, w in [(16, 16), (6, 6), (14, 10)]:
        for seed in range(5):
            np.random.seed(seed)
            want = released(h, w)
            np.random.seed(seed)
            assert (t.sample(h, w)[0] == want).all(), (h, w, seed)


def test_iid_counts_are_binomial():
    np.random.seed(1)
    c0 = position_counts(UniformMasking(sampling='iid'), 8, 3000)[:, 0]
    exact = stats.binom(64, 0.25)  # std 3.46
    observed = np.bincount(c0, minlength=65)
    assert chi2_pvalue(observed, exact.pmf(np.arange(65))) > 1e-3
    assert abs(c0.var(ddof=1) / exact.var() - 1) < 4 * np.sqrt(2 / 3000)


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
    (dict(sampling='grid'),
     r"sampling.*'released', 'iid', 'balanced'.*'grid'"),
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
