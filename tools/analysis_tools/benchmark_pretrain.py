"""Pre-training efficiency of UM-MAE, GreenMIM and ViTFreeze against their
baselines, side by side (issues 8, 25): a thin command line over
:mod:`mmum.utils.benchmark`, which builds each row from its real config as
mmengine's ``Runner`` does (data preprocessor merged, ``init_weights``) and
trains it on synthetic images through the config's own masking transforms,
``PackInputs``, collate function and ``train_step``. The rows of a pair run in
one process with their steps interleaved round-robin.

Pairs (``--methods`` picks rows by name, see ``--list``): UM-MAE vs SimMIM on
Swin-T and PVT-S at 256 px (with UM-MAE's compact-positions ablation);
GreenMIM vs SimMIM on Swin-B at 224 px (``--swin-l``: Swin-L, ``--twins-l``:
Twins-L); LocalMIM ViT-B vs ViTFreeze at 60 / 80 / 95 % of its schedule
(``--vitfreeze-swin``: LocalMIM vs ViTFreeze@0.8 on UM-MAE's compact Swin-T).

Modes: ``--amp`` runs the rows in mixed precision instead (CUDA: the configs'
``AmpOptimWrapper``, fp16 with dynamic loss scaling; CPU: bf16 autocast around
the forward and loss), ``--amp both`` in fp32 and AMP; ``--compile`` /
``--compile both`` likewise with ``torch.compile`` of the model's forward and
loss (optimizer step outside; GreenMIM rows stay eager: the window grouping
changes with every mask). The modes of a row share its model and are
interleaved with the other rows of its pair.

Batch: ``--batch-size``, else 2 on CPU and the config's per-GPU batch on
CUDA. ``--with-cp``: activation checkpointing of each pre-training encoder
(loss / gradient equality, saved activations and step time with and
without). ``--keep-freed-memory``: glibc keeps freed memory as the CUDA
caching allocator does (no page faults of freed activations every step).
``--tiny``: tiny architectures, 1 + 2 steps, no targets judged (smoke test).

    python tools/analysis_tools/benchmark_pretrain.py --fused-optim
    python tools/analysis_tools/benchmark_pretrain.py --amp both --compile both
    python tools/analysis_tools/benchmark_pretrain.py --device cuda --amp
"""
import argparse
import json
import textwrap
import warnings
from typing import Dict, List, Optional



def __getattr__(name):
    """The library's names (``ROWS``, ``PAIRS``, ``add_ratios``, ...), imported
    on first use so that ``--help`` does not wait for torch."""
    from mmum.utils import benchmark
    return getattr(benchmark, name)


def _lib():
    from mmum.utils import benchmark
    return benchmark


WITH_CP_ROWS = ('ummae_swin_t', 'ummae_pvt_s', 'greenmim_swin_b',
                'greenmim_swin_l', 'greenmim_twins_l', 'localmim_vit_b')
WITH_CP_DEFAULT = ('ummae_swin_t', 'ummae_pvt_s', 'greenmim_swin_b',
                   'localmim_vit_b')


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2])
    p.add_argument('--methods', nargs='+', metavar='ROW',
                   help='rows to run (default: all but the optional pairs); '
                   'a pair runs interleaved when its rows are selected')
    p.add_argument('--swin-l', action='store_true',
                   help='add the GreenMIM / SimMIM Swin-L pair')
    p.add_argument('--twins-l', action='store_true',
                   help='add the GreenMIM / SimMIM Twins-L (SVT-L) pair')
    p.add_argument('--vitfreeze-swin', action='store_true',
                   help='add LocalMIM / ViTFreeze@0.8 on compact Swin-T')
    p.add_argument('--list', action='store_true', help='list the rows')
    p.add_argument('--batch-size', type=int, default=None,
                   help='images per step (default: 2 on CPU, the config\'s '
                   'per-GPU batch on CUDA)')
    p.add_argument('--img-size', type=int, default=None,
                   help='every row\'s resolution (default: 256 for Swin-T / '
                   'PVT-S, 224 for Swin-B/L, Twins-L and ViT-B)')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps')
    p.add_argument('--steps', type=int, default=5, help='timed steps')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=1,
                   help='torch.set_num_threads (1 keeps CPU timings steady '
                   'on a shared machine)')
    p.add_argument('--amp', nargs='?', const='only', choices=['only', 'both'],
                   help='mixed precision (fp16 on CUDA as the configs, bf16 '
                   'autocast on CPU); "both": fp32 and AMP rows')
    p.add_argument('--compile', nargs='?', const='only',
                   choices=['only', 'both'],
                   help='torch.compile of forward + loss; "both": eager and '
                   'compiled rows')
    p.add_argument('--tiny', action='store_true',
                   help='tiny architectures, 1 warm-up + 2 timed steps, no '
                   'targets judged (smoke test)')
    p.add_argument('--fused-optim', action='store_true',
                   help='fused=True for every Adam/AdamW (same maths, ~5x '
                   'faster optimizer step on CPU)')
    p.add_argument('--keep-freed-memory', action='store_true',
                   help='CPU, glibc: keep freed memory in the process '
                   '(mallopt) as the CUDA caching allocator does')
    p.add_argument('--json', help='also write the rows to this file')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--with-cp', action='store_true',
                   help='activation checkpointing of each pre-training '
                   f'encoder (rows: {", ".join(WITH_CP_ROWS)})')
    args = p.parse_args(argv)
    if args.tiny:
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    if args.steps < 1 or args.warmup < 0 or (args.batch_size is not None
                                             and args.batch_size < 1):
        p.error('--steps and --batch-size must be >= 1, --warmup >= 0')
    return args


def modes(args) -> List[tuple]:
    """``(amp, compiled)`` pairs to run, in table order."""
    amp = {None: [False], 'only': [True], 'both': [False, True]}[args.amp]
    comp = {None: [False], 'only': [True],
            'both': [False, True]}[args.compile]
    return [(a, c) for a in amp for c in comp]


def selected(args) -> List[List[str]]:
    OPTIONAL, PAIRS, ROWS = _lib().OPTIONAL, _lib().PAIRS, _lib().ROWS
    flagged = [n for flag, rows in OPTIONAL.items() if getattr(args, flag)
               for n in rows]
    optional = [n for rows in OPTIONAL.values() for n in rows]
    names = list(args.methods or [n for n in ROWS if n not in optional])
    names += [n for n in flagged if n not in names]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; choose from {list(ROWS)}')
    return [[n for n in pair if n in names] for pair in PAIRS
            if any(n in names for n in pair)]


# ---------------------------------------------------------------- printing
def markdown_table(header: List[str], body: List[List[str]]) -> List[str]:
    """The lines of a Markdown table, columns padded to their widest cell."""
    widths = [max(len(x[i]) for x in [header] + body)
              for i in range(len(header))]

    def line(xs):
        return '| ' + ' | '.join(x.ljust(w) for x, w in zip(xs, widths)) + ' |'

    return [line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
            ] + [line(b) for b in body]


def table(results: List[dict], columns) -> List[str]:
    def cell(r, key, fmt):
        if key == 'min-max':
            return f"{r['time_min_ms']:.0f}-{r['time_max_ms']:.0f}"
        v = r.get(key)
        return '-' if v is None else fmt.format(v)

    return markdown_table([c[0] for c in columns],
                          [[cell(r, k, f) for _, k, f in columns]
                           for r in results])


ROW = [('method', 'method', '{}'), ('arch', 'arch', '{}'),
       ('mode', 'mode', '{}')]
# two tables, each about 110 characters wide: cost, then ratios
COST_COLUMNS = ROW[:2] + [('img', 'img', '{}')] + ROW[2:] + [
    ('enc tok/img', 'tokens', '{}'), ('step ms', 'time_ms', '{:.1f}'),
    ('min-max', 'min-max', None), ('optim ms', 'optim_ms', '{:.1f}'),
    ('peak MiB', 'mem_mib', '{:.0f}'), ('act MiB/img', 'act_mib', '{:.1f}')]
RATIO_COLUMNS = ROW + [
    ('train GFLOP/img', 'train_gflops', '{:.3g}'),
    ('enc GF', 'enc_gflops', '{:.3g}'), ('dec GF', 'dec_gflops', '{:.3g}'),
    ('time x', 'time_x', '{:.2f}'), ('mem x', 'mem_x', '{:.2f}'),
    ('act x', 'act_x', '{:.2f}'), ('FLOPs x', 'flops_x', '{:.2f}'),
    ('encF x', 'enc_flops_x', '{:.2f}'), ('grp %', 'grouping_pct', '{:.2f}')]
COLUMNS = COST_COLUMNS + RATIO_COLUMNS[len(ROW):]
CP_COLUMNS = [
    ('method', 'method', '{}'), ('arch', 'arch', '{}'), ('img', 'img', '{}'),
    ('act MiB/img', 'act_mib', '{:.1f}'), ('act cp', 'act_mib_cp', '{:.1f}'),
    ('act saved', 'act_saving', '{:.0%}'),
    ('peak MiB', 'mem_mib', '{:.0f}'), ('peak cp', 'mem_mib_cp', '{:.0f}'),
    ('step ms', 'time_ms', '{:.1f}'), ('step cp', 'time_ms_cp', '{:.1f}'),
    ('time x', 'time_x', '{:.2f}'), ('loss diff', 'loss_diff', '{:.1e}'),
    ('grad diff', 'grad_diff', '{:.1e}')]


def setting_line(args, results) -> str:
    import torch
    batches = sorted({r['batch_size'] for r in results})
    return (f'device: {_lib().device_name(args)}; torch {torch.__version__}, '
            f'{torch.get_num_threads()} thread(s); batch '
            f'{"/".join(map(str, batches))}, {args.warmup} warm-up + '
            f'{args.steps} timed steps per row, interleaved' +
            (' (TINY archs: smoke test, no targets judged)'
             if args.tiny else '') +
            ('; fused AdamW' if args.fused_optim else
             '; the configs\' optimizers'))


def format_tables(results: List[dict], args) -> str:
    if _lib().is_cuda(args):
        mem = ('peak MiB: torch.cuda.max_memory_allocated during a step above '
               'what was allocated at its start, plus parameters, buffers and '
               'optimizer state')
    else:
        mem = ('peak MiB: the CPU allocator\'s live bytes (torch profiler, '
               'profile_memory) during a step above those live at its start, '
               'plus parameters, buffers and optimizer state (tensor memory, '
               'not RSS)')
    notes = [
        setting_line(args, results),
        'step ms: median (min-max) of train_step: data preprocessor, '
        'forward, loss, backward, optimizer step; optim ms: its optimizer '
        f'step; mode: fp32, {_lib().amp_label(args)} (AMP), c = compiled '
        'forward',
        mem,
        'act MiB/img: what the forward leaves alive for the backward, per '
        'image (memory targets are judged on act x: at the papers\' batch '
        'sizes it is nearly all of the peak)',
        'GFLOP/img: FlopCounterMode over forward + backward (enc GF: '
        'backbone, dec GF: neck; not split for LocalMIM, whose decoders read '
        'several blocks); enc tok/img: tokens entering the first block',
        'x: the reference row\'s value / this row\'s in the same mode (> 1: '
        'cheaper); grp %: share of the step in GreenMIM\'s grouping and '
        'index planning',
    ]
    notes += [f"{r['method']} {r['arch']}: {r['frozen']} (FreezeOutLR and "
              'DecoderPruningHook at that point of the schedule)'
              for r in results if r.get('frozen') and r['mode'] ==
              results[0]['mode']]
    targets = [f"targets {r['method']} {r['arch']} {r['mode']} (vs "
               f"{r['ref_label']}): {r['verdict']}"
               for r in results if r['targets'] and not args.tiny]
    notes = [textwrap.fill(n, 100, subsequent_indent='  ') for n in notes]
    return '\n'.join(
        table(results, COST_COLUMNS) + [''] + table(results, RATIO_COLUMNS) +
        [''] + mode_table(results) + notes + [''] + targets +
        page_faults(results, args) +
        positions_cost(results, judge=not args.tiny) +
        where_time_goes(results))


def mode_table(results: List[dict]) -> List[str]:
    """With several modes: each row's step time per mode and the speed-up
    over its fp32 eager step."""
    modes_seen = list(dict.fromkeys(r['mode'] for r in results))
    if len(modes_seen) < 2:
        return []
    by = {(r['name'], r['mode']): r for r in results}
    body = []
    for name in dict.fromkeys(r['name'] for r in results):
        base = by.get((name, modes_seen[0]))
        cells = [base['method'], base['arch']] if base else [name, '']
        for m in modes_seen:
            r = by.get((name, m))
            cells.append('-' if r is None else f"{r['time_ms']:.0f}")
            if m != modes_seen[0]:
                cells.append('-' if r is None or base is None else
                             f"{base['time_ms'] / r['time_ms']:.2f}")
        body.append(cells)
    header = ['method', 'arch', f'{modes_seen[0]} ms']
    for m in modes_seen[1:]:
        header += [f'{m} ms', f'{m} x']
    return markdown_table(header, body) + [
        f'(step ms per mode; x: {modes_seen[0]} step / this mode\'s)', '']


def page_faults(results: List[dict], args) -> List[str]:
    """Minor page faults per timed step of each row (median), CPU only."""
    if _lib().is_cuda(args):
        return []
    rows = ', '.join(f"{r['method']} {r['arch']} {r['faults']:.0f}"
                     for r in results if 'faults' in r)
    how = ('freed memory kept in the process (--keep-freed-memory)'
           if args.keep_freed_memory else
           'glibc\'s default malloc; --keep-freed-memory keeps freed memory'
           ' as the CUDA caching allocator does')
    return ['', f'minor page faults per step (median; {how}): {rows}']


POSITIONS_COST = dict(time=5., act=10.)  # max % over 'compact' (issue 13)


def positions_cost(results: List[dict], judge: bool = True) -> List[str]:
    """What UM-MAE's original positions (the configs' default) cost against
    ``positions='compact'``: extra step time and saved activations, in %,
    and (``judge``) the targets of issue 13, for each pair of such rows."""
    by = {(r['name'], r.get('mode')): r for r in results}
    out = []
    for r in results:
        orig = by.get((r['name'][:-len('_compact')], r.get('mode')))
        if r.get('positions') != 'compact' or orig is None:
            continue
        cost = {k: 100 * (orig[f'{k}_{u}'] / r[f'{k}_{u}'] - 1)
                for k, u in (('time', 'ms'), ('act', 'mib'))}
        verdict = ', '.join(
            f"{label} {cost[k]:+.1f}%" + (
                f" (<= {POSITIONS_COST[k]:g}% "
                f"{'met' if cost[k] <= POSITIONS_COST[k] else 'MISSED'})"
                if judge else '')
            for k, label in (('time', 'step time'), ('act', 'saved act.')))
        out.append(f"{orig['method']} {orig['arch']}: original positions vs "
                   f"compact: {verdict}")
    return [''] + out if out else []


def where_time_goes(results: List[dict]) -> List[str]:
    """For each row that misses a target: its FLOPs split and the bound the
    split puts on its ratios, from the measured values above."""
    out = []
    for r in results:
        if 'MISSED' not in r.get('verdict', '') or not r.get('dec_gflops'):
            continue
        dec = r['dec_gflops'] / r['train_gflops']
        out.append(
            f"{r['method']} {r['arch']} misses a target. Where its step "
            f"goes: the decoder is {dec:.0%} of its training FLOPs "
            f"({r['dec_gflops']:.3g} of {r['train_gflops']:.3g} GFLOP/img), "
            f"the encoder {r['enc_gflops']:.3g} ({r['enc_flops_x']:.2f}x "
            f"fewer than {r['ref_label']}'s); so the whole step does "
            f"{r['flops_x']:.2f}x fewer FLOPs than {r['ref_label']} while "
            f"time is {r['time_x']:.2f}x; the optimizer step is "
            f"{r['optim_ms'] / r['time_ms']:.0%} of its step time. The "
            f"decoder also holds {r['dec_act_mib']:.3g} of its "
            f"{r['act_mib']:.3g} MiB/img of saved activations "
            f"({r['dec_act_mib'] / r['act_mib']:.0%}).")
    return [''] + out if out else []


def format_cp_table(results: List[dict], args) -> str:
    return '\n'.join(table(results, CP_COLUMNS) + ['', setting_line(
        args, [dict(batch_size=r['batch_size']) for r in results]),
        'each row: the config\'s model with backbone.with_cp False and True '
        '("cp" columns), same weights; act saved = 1 - cp/without; time x = '
        'step time cp / without; loss diff, grad diff: largest absolute '
        'differences of one forward+backward on the same batch and draws'])


# --------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.list:
        for name, spec in _lib().ROWS.items():
            print(f"{name:22} {spec['method']:16} {spec['arch']:7} "
                  f"{spec['config']}")
        return []
    import numpy as np
    import torch
    from mmengine.logging import MMLogger

    from mmum.utils import benchmark as bm
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    # quiet the optimizer constructors' per-parameter INFO lines
    MMLogger.get_instance('benchmark_pretrain', log_level='WARNING')
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    if args.keep_freed_memory:
        bm.keep_freed_memory()
    if args.with_cp:
        names = [n for n in WITH_CP_ROWS
                 if n in (args.methods or WITH_CP_DEFAULT) or
                 (args.swin_l and 'swin_l' in n) or
                 (args.twins_l and 'twins_l' in n)]
        unknown = set(args.methods or ()) - set(WITH_CP_ROWS)
        if unknown or not names:
            raise ValueError(f'--with-cp rows are {WITH_CP_ROWS}; got '
                             f'{sorted(unknown) or args.methods}')
        results = []
        for name in names:
            print(f'running {name} without / with with_cp ...', flush=True)
            results.append(bm.run_with_cp(name, args))
        print(format_cp_table(results, args), flush=True)
    else:
        results = []
        for pair in selected(args):
            print(f'running {" | ".join(pair)} ...', flush=True)
            results += bm.run_pair(pair, args, modes(args))
        bm.add_ratios(results, judge=not args.tiny)
        print(format_tables(results, args), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
