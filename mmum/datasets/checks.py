"""Up-front checks of the training data location (``tools/train.py``).

mmpretrain's ImageNet fails on a missing root with a bare ``[Errno 2]`` and
on an empty annotation file with numpy's "need at least one array to
concatenate"; these checks say which config entry is wrong and what layout
is expected, before any model is built.
"""
import os.path as osp


def _resolve(root, path):
    if not path:
        return path
    return path if osp.isabs(path) or not root else osp.join(root, path)


def check_train_data(cfg) -> None:
    """Check ``cfg.train_dataloader.dataset``: its ``data_root`` exists, and
    its annotation file (``ann_file``, or ImageNet's ``meta/<split>.txt``),
    if there is one, lists at least one sample. Wrappers (``dataset`` inside
    ``dataset``) are followed; other layouts are left to the dataset."""
    loader = cfg.get('train_dataloader') or {}
    dataset = loader.get('dataset') or {}
    while isinstance(dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    root = dataset.get('data_root')
    if root and not osp.isdir(root):
        raise FileNotFoundError(
            f'train_dataloader.dataset.data_root={root!r} does not exist; '
            f'point it at the training images (ImageNet in mmpretrain\'s '
            f'layout: <root>/train/ and <root>/meta/train.txt), e.g. '
            f'--cfg-options train_dataloader.dataset.data_root=PATH')
    ann = _resolve(root, dataset.get('ann_file'))
    split = dataset.get('split')
    if not ann and split and root:
        default = osp.join(root, 'meta', f'{split}.txt')
        ann = default if osp.isfile(default) else None
    if ann:
        if not osp.isfile(ann):
            raise FileNotFoundError(
                f'annotation file {ann!r} (train_dataloader.dataset.'
                f'ann_file) does not exist; it must list one '
                f'"<image path> <label>" per line')
        with open(ann) as f:
            if not any(line.strip() for line in f):
                raise ValueError(
                    f'annotation file {ann!r} lists no images; the training '
                    f'set must hold at least one "<image path> <label>" '
                    f'line')
