"""Optimal grouping (GreenMIM §3.3, Alg. 1) and the group plan it yields."""
import random

import pytest
import torch

from mmum.models.layers.group_window_attention import (build_group_plan,
                                                       window_ids)
from mmum.models.layers.optimal_grouping import (brute_force_grouping,
                                                 grouping_cost, knapsack,
                                                 optimal_grouping,
                                                 partition_windows)


def _max_subset_sum(capacity, weights):
    best = 0
    for m in range(1 << len(weights)):
        s = sum(w for i, w in enumerate(weights) if m >> i & 1)
        if s <= capacity:
            best = max(best, s)
    return best


def test_knapsack_fills_as_much_as_possible():
    rng = random.Random(0)
    for _ in range(300):
        weights = [rng.randint(1, 12) for _ in range(rng.randint(1, 9))]
        cap = rng.randint(max(weights), sum(weights))
        chosen = knapsack(cap, weights)
        assert len(set(chosen)) == len(chosen)
        assert sum(weights[i] for i in chosen) == _max_subset_sum(
            cap, weights)


def test_partition_places_every_window_once_within_group_size():
    rng = random.Random(1)
    for _ in range(200):
        counts = tuple(rng.randint(1, 49) for _ in range(rng.randint(1, 81)))
        gs = rng.randint(max(counts), max(counts) + 60)
        groups = partition_windows(gs, counts)
        placed = sorted(w for g in groups for w in g)
        assert placed == list(range(len(counts)))
        assert all(sum(counts[w] for w in g) <= gs for g in groups)


def test_partition_rejects_group_smaller_than_a_window():
    with pytest.raises(ValueError, match='group_size 3'):
        partition_windows(3, (2, 5))
    with pytest.raises(ValueError, match='positive'):
        optimal_grouping([3, 0], 8)


def test_sweep_matches_brute_force_on_small_cases():
    rng = random.Random(2)
    for _ in range(300):
        counts = [rng.randint(1, 9) for _ in range(rng.randint(1, 7))]
        channels = rng.choice([1, 4, 16, 64])
        gs, groups, cost = optimal_grouping(counts, channels)
        assert cost == grouping_cost(gs, len(groups), channels)
        assert cost == brute_force_grouping(counts, channels)[1], counts


def test_pruned_sweep_equals_full_sweep():
    """The early stop of the sweep never changes the chosen group size."""
    rng = random.Random(3)
    for _ in range(20):
        counts = [rng.randint(1, 49) for _ in range(rng.randint(2, 30))]
        channels = rng.choice([32, 128, 512])
        full = min(
            (grouping_cost(gs, len(partition_windows(gs, tuple(counts))),
                           channels), gs)
            for gs in range(max(counts), sum(counts) + 1))
        gs, _, cost = optimal_grouping(counts, channels)
        assert (cost, gs) == full


def _random_coords(h, w, f, ratio, gen):
    keep = torch.rand(h, w, generator=gen) >= ratio
    keep[0, 0] = True
    keep = keep.repeat_interleave(f, 0).repeat_interleave(f, 1)
    return keep.nonzero()


@pytest.mark.parametrize('shift', [0, 3])
def test_group_plan_is_a_padded_permutation(shift):
    gen = torch.Generator().manual_seed(0)
    coords = _random_coords(7, 7, 4, 0.6, gen)  # 28x28 map, 4-token units
    n = len(coords)
    plan = build_group_plan(coords, 7, shift, channels=32)
    gs = plan.group_size
    assert plan.index.numel() % gs == 0
    real = plan.index[plan.index < n]
    assert sorted(real.tolist()) == list(range(n))  # every token once
    assert torch.equal(plan.index[plan.slot], torch.arange(n))
    # allowed pairs: exactly the pairs of one window
    win = window_ids(coords, 7, shift)
    label = torch.full((plan.index.numel(), ), -1)
    label[plan.slot] = win
    label = label.view(-1, gs)
    same = label[:, :, None] == label[:, None, :]
    assert torch.equal(plan.allowed, same)
    # no window is split across groups
    for w in win.unique():
        assert len((label == w).any(1).nonzero()) == 1


def test_grouping_report_prints_every_stage(monkeypatch, capsys):
    import runpy
    import sys
    path = 'tools/analysis_tools/grouping_report.py'
    monkeypatch.setattr(sys, 'argv', [path, '--masks', '2'])
    monkeypatch.chdir(__file__.rsplit('/tests/', 1)[0])
    runpy.run_path(path, run_name='__main__')
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [('1', '0'), ('1', '3'),
                                            ('2', '0'), ('2', '3'),
                                            ('3', '0'), ('3', '3'),
                                            ('4', '0')]
    assert 'optimal' in out and 'fixed' in out
