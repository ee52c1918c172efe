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
            f'layout: <root>/train/ and <root>/meta/train.txt; for the '
            f'pre-training configs (mmum.ImageFolder) any folder of images), '
            f'e.g. '
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


# color types of mmcv's imfrombytes that give 3 channels
_THREE_CHANNELS = ('color', 'color_ignore_orientation')


def _find_loaders(obj, path):
    if isinstance(obj, dict):
        if str(obj.get('type', '')).split('.')[-1].endswith(
                'LoadImageFromFile'):
            yield path, obj
        for k, v in obj.items():
            yield from _find_loaders(v, f'{path}.{k}' if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _find_loaders(v, f'{path}[{i}]')


def check_image_channels(cfg) -> None:
    """Refuse an image loader of ``cfg`` (any pipeline: data loaders, hooks)
    whose ``color_type`` does not give 3 channels while the model takes 3
    (``model.backbone.in_channels``, default 3): the data preprocessors'
    RGB mean / std and ``to_rgb`` would fail later with an IndexError.

    Raises:
        ValueError: naming the pipeline entry, its ``color_type`` and the
            fix (``color_type='color'`` loads grayscale files as 3 equal
            channels).
    """
    model = cfg.get('model') or {}
    backbone = model.get('backbone') or {}
    if backbone.get('in_channels', 3) != 3:
        return
    for path, t in _find_loaders(getattr(cfg, '_cfg_dict', cfg), ''):
        color = t.get('color_type', 'color')
        if color not in _THREE_CHANNELS:
            got = ('one channel' if 'gray' in color else
                   'the channels stored in the file (1 for grayscale, 4 '
                   'with alpha)')
            raise ValueError(
                f"{path}: {t['type']}(color_type={color!r}) gives images "
                f'with {got}, but the model takes 3 (RGB: the data '
                f'preprocessor\'s '
                f'mean / std and to_rgb, the patch embedding). Use '
                f"color_type='color' (the default): grayscale files are "
                f'loaded as 3 equal channels, so the pre-trained 3-channel '
                f'weights apply.')
