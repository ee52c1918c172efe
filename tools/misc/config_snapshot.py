"""Dump what every config in ``configs/`` resolves to, as JSON.

Used to check that moving shared blocks into ``configs/_base_/`` changes no
built model, data preprocessor, optimiser, schedule or data loader::

    python tools/misc/config_snapshot.py > before.json   # before the change
    python tools/misc/config_snapshot.py --check before.json  # after it

``tests/test_config_snapshot.py`` compares ``configs/`` against the snapshot
kept in ``tests/data/config_snapshot.json``; after a deliberate change of a
recipe, rewrite it with ``--out tests/data/config_snapshot.json``.
"""
import argparse
import glob
import json
import os.path as osp
import sys
import warnings

warnings.filterwarnings('ignore')  # pkg_resources notices of the toolboxes
from mmengine.config import Config  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
KEYS = ('model', 'data_preprocessor', 'optim_wrapper', 'param_scheduler',
        'train_dataloader', 'train_cfg', 'auto_scale_lr', 'default_hooks',
        'custom_hooks')


def config_paths():
    """Every config below ``configs/`` except the ``_base_`` pieces,
    relative to the repository root."""
    return sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                           recursive=True)
        if f'{osp.sep}_base_{osp.sep}' not in p)


def _plain(obj):
    """Config values as JSON-able values (tuples become lists, anything
    else its repr)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def resolve(path):
    """The resolved ``KEYS`` of one config (``path`` relative to the root)."""
    cfg = Config.fromfile(osp.join(ROOT, path)).to_dict()
    return {k: _plain(cfg.get(k)) for k in KEYS}


def snapshot():
    return {p: resolve(p) for p in config_paths()}


def diff(old, new, where=''):
    """Human-readable differences between two resolved values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k not in new:
                out.append(f'{where}.{k}: removed')
            elif k not in old:
                out.append(f'{where}.{k}: added = {new[k]!r}')
            else:
                out += diff(old[k], new[k], f'{where}.{k}')
        return out
    if isinstance(old, list) and isinstance(new, list) and \
            len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in diff(a, b, f'{where}[{i}]')]
    return [] if old == new else [f'{where}: {old!r} -> {new!r}']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', help='write the snapshot here (default: '
                        'standard output)')
    parser.add_argument('--check', metavar='SNAPSHOT',
                        help='compare configs/ with this snapshot; exit 1 '
                        'and list the differences if any')
    args = parser.parse_args()
    now = snapshot()
    if args.check:
        with open(args.check) as f:
            old = json.load(f)
        lines = diff(old, now)
        print('\n'.join(lines) if lines else
              f'{len(now)} configs resolve as in {args.check}')
        sys.exit(1 if lines else 0)
    text = json.dumps(now, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    else:
        print(text)


if __name__ == '__main__':
    main()
