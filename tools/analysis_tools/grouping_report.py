"""Per-stage report of GreenMIM's optimal grouping versus a fixed group size.

For random batch-wise masks (32-px units) it prints, per Swin stage and
window shift, the group size chosen by the sweep of Alg. 1 with the Eq. 8
cost, its padding share and cost, next to the rule of the official GreenMIM
code: one masked group holding all tokens when a stage has at most
2 * window_size**2 visible tokens, else the fixed group size
``min(window_size**2, max visible tokens per window)`` (marked FIXME there)
packed by the same repeated knapsack. Costs are Eq. 8 FLOPs summed over the
stage's blocks of that shift.

    python tools/analysis_tools/grouping_report.py            # Swin-B, 224 px
    python tools/analysis_tools/grouping_report.py --arch large --window 14
"""
import argparse
import time

# torch, mmpretrain and mmum are imported where they are used, after the
# arguments are parsed, so that --help answers at once


def official_grouping(counts, channels, window_size):
    """(group_size, num_groups, cost) of the official code's rule."""
    from mmum.models.layers.optimal_grouping import (grouping_cost,
                                                     partition_windows)
    total = sum(counts)
    if total <= 2 * window_size**2:
        return total, 1, grouping_cost(total, 1, channels)
    gs = min(window_size**2, max(counts))
    n = len(partition_windows(gs, tuple(counts)))
    return gs, n, grouping_cost(gs, n, channels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='base')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--window', type=int, default=7)
    parser.add_argument('--ratio', type=float, default=0.75)
    parser.add_argument('--masks', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    import torch
    from mmpretrain.models import SwinTransformer

    from mmum.models.layers.group_window_attention import window_ids
    from mmum.models.layers.optimal_grouping import optimal_grouping

    arch = SwinTransformer.arch_zoo[args.arch]
    depths, ws = arch['depths'], args.window
    n_stages = len(depths)
    units = args.img_size // 32
    torch.manual_seed(args.seed)
    rows = {}
    t_group = 0.
    for _ in range(args.masks):
        keep = torch.zeros(units * units, dtype=torch.bool)
        keep[torch.randperm(units**2)[:int(units**2 * (1 - args.ratio))]] = 1
        keep = keep.view(units, units)
        for i in range(n_stages):
            f = 2**(n_stages - 1 - i)
            coords = keep.repeat_interleave(f, 0).repeat_interleave(
                f, 1).nonzero()
            side = units * f
            channels = arch['embed_dims'] * 2**i
            shifted = side > ws  # Swin drops the shift on a one-window map
            for shift in [0, ws // 2] if shifted else [0]:
                # blocks alternate plain / shifted windows
                n_blocks = (depths[i] if not shifted else
                            (depths[i] + 1) // 2 if shift == 0 else
                            depths[i] // 2)
                win = window_ids(coords, ws, shift)
                counts = torch.unique(win, return_counts=True)[1].tolist()
                t0 = time.perf_counter()
                gs, groups, cost = optimal_grouping(counts, channels)
                t_group += time.perf_counter() - t0
                ogs, on, ocost = official_grouping(counts, channels, ws)
                total = sum(counts)
                r = rows.setdefault((i, shift), dict(
                    C=channels, windows=0, tokens=0, gs=[], pad=0., cost=0.,
                    ogs=[], opad=0., ocost=0.))
                r['windows'] += len(counts) / args.masks
                r['tokens'] += total / args.masks
                r['gs'].append(gs)
                r['pad'] += (1 - total / (len(groups) * gs)) / args.masks
                r['cost'] += n_blocks * cost / args.masks
                r['ogs'].append(ogs)
                r['opad'] += (1 - total / (on * ogs)) / args.masks
                r['ocost'] += n_blocks * ocost / args.masks

    print(f'Swin-{args.arch} {args.img_size}px window {ws} ratio '
          f'{args.ratio}, {args.masks} masks (means; costs = Eq. 8 GFLOPs '
          'per image summed over the blocks of that shift)')
    head = (f'{"stage":>5} {"shift":>5} {"C":>5} {"wins":>5} {"tokens":>6} | '
            f'{"opt gs":>14} {"pad":>6} {"cost":>7} | {"fixed gs":>14} '
            f'{"pad":>6} {"cost":>7} | {"opt/fixed":>9}')
    print(head)
    print('-' * len(head))
    tot, otot = 0., 0.
    for (i, shift), r in sorted(rows.items()):
        tot += r['cost']
        otot += r['ocost']
        print(f'{i + 1:>5} {shift:>5} {r["C"]:>5} {r["windows"]:>5.1f} '
              f'{r["tokens"]:>6.0f} | {_range(r["gs"]):>14} '
              f'{100 * r["pad"]:>5.1f}% {r["cost"] / 1e9:>7.3f} | '
              f'{_range(r["ogs"]):>14} {100 * r["opad"]:>5.1f}% '
              f'{r["ocost"] / 1e9:>7.3f} | {r["cost"] / r["ocost"]:>9.3f}')
    print(f'all stages: optimal {tot / 1e9:.3f} vs fixed {otot / 1e9:.3f} '
          f'GFLOPs of attention per image ({tot / otot:.3f}x); grouping '
          f'search {1e3 * t_group / args.masks:.1f} ms per mask')


def _range(values):
    lo, hi = min(values), max(values)
    return f'{lo}' if lo == hi else f'{lo}-{hi}'


if __name__ == '__main__':
    main()
