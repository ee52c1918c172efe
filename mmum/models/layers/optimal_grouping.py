"""Optimal Grouping of GreenMIM (paper §3.3, Alg. 1).

Windows hold uneven numbers of visible tokens ``w_i``. They are packed into
equal-size groups of ``g_s`` slots (padded), and one masked attention runs per
group. For every group size from ``max w_i`` to ``sum w_i`` the windows are
partitioned by repeating a subset-sum knapsack (Eq. 7) until all are placed;
the group size with the smallest attention FLOPs (Eq. 8) wins.

Speed: the knapsack keeps its reachable sums as the bits of one Python int
(one shift-or per window); the result is memoised per ``(counts, C)``; a
partition is abandoned as soon as it needs more groups than could beat the
best cost so far; and the sweep stops at the first group size whose lower
bound ``sum(w) * (4 C^2 + 2 g_s C)`` (every slot costs at least that) reaches
the best cost, which cannot change the arg-min as the bound grows with
``g_s``.
"""
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

Partition = Tuple[Tuple[int, ...], ...]  # groups of window indices


def knapsack(capacity: int, weights: Sequence[int]) -> List[int]:
    """Eq. 7: indices of a subset of ``weights`` with the largest sum that
    fits in ``capacity`` (subset-sum DP, value == weight).

    Among the subsets reaching that sum it returns the one that takes the
    largest windows first, which leaves small windows to fill later groups
    (on random cases of up to 8 windows the sweep then matches brute force;
    larger counter-examples exist, the partition problem being NP-hard).
    """
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    full = (1 << (capacity + 1)) - 1
    suffix = [1]  # bit s of suffix[k]: sum s reachable with order[k:]
    for i in reversed(order):
        suffix.append((suffix[-1] | (suffix[-1] << weights[i])) & full)
    suffix = suffix[::-1]
    target = suffix[0].bit_length() - 1
    chosen = []
    for k, i in enumerate(order):
        w = weights[i]
        if w <= target and (suffix[k + 1] >> (target - w)) & 1:
            chosen.append(i)
            target -= w
    return sorted(chosen)


def partition_windows(group_size: int,
                      counts: Sequence[int],
                      max_groups: Optional[int] = None) -> Optional[Partition]:
    """Alg. 1 lines 3-8: repeat the knapsack on the remaining windows until
    every window is placed. Returns groups of indices into ``counts``, or
    None as soon as more than ``max_groups`` groups would be needed."""
    if max(counts) > group_size:
        raise ValueError(f'group_size {group_size} is smaller than the '
                         f'largest window ({max(counts)} visible tokens)')
    remaining = list(range(len(counts)))
    left = sum(counts)
    groups = []
    while remaining:
        if max_groups is not None and (
                len(groups) + -(-left // group_size) > max_groups):
            return None  # even perfectly full groups would be too many
        if left <= group_size:
            picked = range(len(remaining))
        else:
            picked = knapsack(group_size, [counts[i] for i in remaining])
        groups.append(tuple(remaining[i] for i in picked))
        left -= sum(counts[w] for w in groups[-1])
        picked = set(picked)
        remaining = [w for i, w in enumerate(remaining) if i not in picked]
    return tuple(groups)


def grouping_cost(group_size: int, num_groups: int, channels: int) -> int:
    """Eq. 8: FLOPs of the attention on ``num_groups`` groups of
    ``group_size`` tokens with ``channels`` channels."""
    return num_groups * (4 * group_size * channels**2 +
                         2 * group_size**2 * channels)


@lru_cache(maxsize=1024)
def _optimal_grouping(counts: Tuple[int, ...],
                      channels: int) -> Tuple[int, Partition, int]:
    total = sum(counts)
    best = (0, (), None)
    for gs in range(max(counts), total + 1):
        per_group = grouping_cost(gs, 1, channels)
        if best[2] is None:
            max_groups = None
        elif total * (4 * channels**2 + 2 * gs * channels) >= best[2]:
            break  # lower bound of every larger group size: done
        else:
            max_groups = (best[2] - 1) // per_group  # to beat the best
        groups = partition_windows(gs, counts, max_groups)
        if groups is not None:
            best = (gs, groups, len(groups) * per_group)
    return best


def optimal_grouping(counts: Sequence[int],
                     channels: int) -> Tuple[int, Partition, int]:
    """Alg. 1 with the Eq. 8 cost.

    Args:
        counts: visible tokens per window (all > 0).
        channels: channels ``C`` of the attention (the stage width).

    Returns:
        ``(group_size, groups, cost)``; ``groups`` lists window indices.
    """
    counts = tuple(int(c) for c in counts)
    if not counts or min(counts) <= 0:
        raise ValueError(f'counts must be non-empty and positive, got '
                         f'{counts}')
    return _optimal_grouping(counts, int(channels))


def brute_force_grouping(counts: Sequence[int],
                         channels: int) -> Tuple[int, int]:
    """Reference for tests: the exact minimum of Eq. 5-6 by enumerating
    every partition of the windows (Bell-number many: keep ``counts`` tiny).

    Returns ``(group_size, cost)``.
    """
    counts = tuple(counts)

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for p in partitions(rest):
            for i in range(len(p)):
                yield p[:i] + [[first] + p[i]] + p[i + 1:]
            yield [[first]] + p

    min_groups = {}  # largest group load -> fewest groups with that load
    for p in partitions(list(range(len(counts)))):
        load = max(sum(counts[i] for i in g) for g in p)
        min_groups[load] = min(min_groups.get(load, len(p)), len(p))
    best = (0, float('inf'))
    for gs in range(max(counts), sum(counts) + 1):
        n = min(n for load, n in min_groups.items() if load <= gs)
        cost = grouping_cost(gs, n, channels)
        if cost < best[1]:
            best = (gs, cost)
    return best


__all__ = [
    'knapsack', 'partition_windows', 'grouping_cost', 'optimal_grouping',
    'brute_force_grouping'
]
