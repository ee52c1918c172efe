"""Helpers for the KNNEvalHook / ReconstructionHook tests: a generated
labelled dataset whose classes differ visibly (colour and shape) in
mmpretrain's CustomDataset layout, and tiny training runs through
tools/train.py (tests/configs/watch_um_mae.py)."""
import json
import os
import os.path as osp

import numpy as np
import torch

from _tiny_runs import drop_new_default_scopes, load_tool

CFG = 'tests/configs/watch_um_mae.py'
ENV = {'OMP_NUM_THREADS': '1'}
# class -> (RGB colour, shape)
CLASSES = {'red_square': ((220, 40, 40), 'square'),
           'green_disc': ((40, 200, 60), 'disc'),
           'blue_triangle': ((50, 70, 230), 'triangle'),
           'yellow_cross': ((230, 220, 40), 'cross')}


def draw_shape(rng, colour, shape, size=64):
    """A noisy grey background with one coloured shape, (size, size, 3) RGB
    uint8, random position and scale."""
    img = rng.integers(60, 140, (size, size, 3)).astype(np.float64)
    r = rng.integers(size // 5, size // 3)
    cy, cx = rng.integers(r, size - r, 2)
    yy, xx = np.mgrid[:size, :size]
    dy, dx = yy - cy, xx - cx
    if shape == 'square':
        inside = (abs(dy) <= r) & (abs(dx) <= r)
    elif shape == 'disc':
        inside = dy**2 + dx**2 <= r**2
    elif shape == 'triangle':
        inside = (dy <= r) & (dy >= -r) & (abs(dx) <= (dy + r) / 2)
    else:
        inside = ((abs(dy) <= r) & (abs(dx) <= r // 3)) | (
            (abs(dx) <= r) & (abs(dy) <= r // 3))
    img[inside] = np.array(colour) + rng.normal(0, 10, (inside.sum(), 3))
    return img.clip(0, 255).astype(np.uint8)


def make_shapes_dataset(root, train_per_class=12, val_per_class=7, seed=0):
    """``root/{train,val}/<class>/<i>.png`` plus ``root/meta/{train,val}_
    random.txt``: the same images with labels drawn at random."""
    import cv2
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        lines = []
        for c, (colour, shape) in CLASSES.items():
            os.makedirs(osp.join(root, split, c), exist_ok=True)
            for i in range(n):
                img = draw_shape(rng, colour, shape)
                cv2.imwrite(osp.join(root, split, c, f'{i}.png'),
                            np.ascontiguousarray(img[..., ::-1]))
                lines.append(f'{c}/{i}.png {rng.integers(len(CLASSES))}\n')
        with open(osp.join(root, 'meta', f'{split}_random.txt'), 'w') as f:
            f.writelines(lines)
    return str(root)


def datasets(root, random_labels=False):
    return {
        f'{split}_dataset': dict(
            type='CustomDataset', data_root=root, data_prefix=split,
            **(dict(ann_file=f'meta/{split}_random.txt')
               if random_labels else {}))
        for split in ('train', 'val')
    }


def train(work, data, *opts, resume=False, cfg=CFG):
    """tools/train.py in this process on the shapes data."""
    from mmengine.registry import DefaultScope
    before = set(DefaultScope._instance_dict)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_tool('train').main(
            [cfg, '--work-dir', str(work), *(['--resume'] if resume else []),
             '--cfg-options', *data_opts(data), *opts,
             f'experiment_name=knn_{osp.basename(str(work))}_{os.getpid()}'])
    finally:
        drop_new_default_scopes(before)
        torch.set_num_threads(threads)


def data_opts(data):
    opts = [f'train_dataloader.dataset.data_root={data}',
            f'custom_hooks.1.dataset.data_root={data}']
    for split in ('train', 'val'):
        opts.append(f'custom_hooks.0.{split}_dataset.data_root={data}')
    return opts


def knn_rows(work, name='knn'):
    with open(osp.join(work, f'{name}_eval.jsonl')) as f:
        return [json.loads(line) for line in f]


