"""Images for pre-training, with or without labels."""
import os
import os.path as osp
from typing import List

from mmengine.dataset import BaseDataset

from mmum.registry import DATASETS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp')


@DATASETS.register_module()
class ImageFolder(BaseDataset):
    """Every image of a folder: for pre-training (which needs no labels),
    and, with one sub-folder per class, for fine-tuning.

    Where the images are listed, first match wins:

    1. ``ann_file`` (relative to ``data_root``): one image per line,
       ``<path> [<label>]``, paths relative to the image folder;
    2. ``<data_root>/meta/<split>.txt`` in the same format (mmpretrain's
       ImageNet layout: the same images in the same order as
       ``dict(type='ImageNet', split=...)``);
    3. otherwise every image file (``extensions``, case-insensitive) found
       recursively, sorted, in the image folder: flat, in class folders, in
       any sub-folders.

    The image folder is ``<data_root>/<data_prefix>`` when ``data_prefix``
    is given, else ``<data_root>/<split>`` when that folder exists, else
    ``data_root`` itself. A listed label becomes ``gt_label``. When the scan
    finds every image inside a sub-folder of the image folder, the
    sub-folders are the classes (sorted names, label = index, in
    ``metainfo['classes']``, as torchvision's ``ImageFolder``); images
    directly in the image folder make the set unlabeled.

    Args:
        data_root (str): The dataset folder.
        split (str): Sub-folder and annotation file name. Defaults to
            ``'train'``.
        ann_file (str): An explicit list file; ``''`` to look for
            ``meta/<split>.txt``, then scan.
        data_prefix (str | dict): The image folder under ``data_root``
            (``dict(img_path=...)`` also accepted).
        extensions (tuple[str]): Image file endings the scan takes.
        **kwargs: ``pipeline``, ``lazy_init``, ... of mmengine's
            ``BaseDataset``.

    Raises:
        FileNotFoundError: ``data_root`` or the image folder does not exist,
            or ``ann_file`` is given and missing.
        ValueError: no image was found or listed (naming the folder and the
            extensions).
    """

    def __init__(self, data_root: str = '', split: str = 'train',
                 ann_file: str = '', data_prefix='',
                 extensions=IMG_EXTENSIONS, **kwargs):
        if isinstance(data_prefix, dict):
            data_prefix = data_prefix.get('img_path', '')
        self.split = split
        self.extensions = tuple(e.lower() for e in extensions)
        self.image_prefix = data_prefix
        super().__init__(data_root=data_root, ann_file=ann_file,
                         data_prefix=dict(img_path=data_prefix), **kwargs)

    def image_folder(self) -> str:
        root = self.data_root or ''
        if self.image_prefix:
            return osp.join(root, self.image_prefix)
        split_dir = osp.join(root, self.split)
        return split_dir if osp.isdir(split_dir) else root

    def load_data_list(self) -> List[dict]:
        root = self.data_root or ''
        if root and not osp.isdir(root):
            raise FileNotFoundError(
                f'ImageFolder: data_root={root!r} does not exist; point it '
                f'at a folder of images (any sub-folders)')
        folder = self.image_folder()
        ann = self.ann_file  # already joined with data_root by BaseDataset
        if not ann:
            meta = osp.join(root, 'meta', f'{self.split}.txt')
            ann = meta if osp.isfile(meta) else ''
        if ann:
            if not osp.isfile(ann):
                raise FileNotFoundError(
                    f'ImageFolder: ann_file {ann!r} does not exist; give a '
                    f'file with one "<image path> [<label>]" per line, or '
                    f"ann_file='' to take every image under {folder!r}")
            data_list = self._from_list(ann, folder)
            source = f'listed in {ann!r}'
        else:
            if not osp.isdir(folder):
                raise FileNotFoundError(
                    f'ImageFolder: image folder {folder!r} does not exist')
            data_list = self._labelled(folder, self._scan(folder))
            source = f'under {folder!r}'
        if not data_list:
            raise ValueError(
                f'ImageFolder: no images {source} (extensions '
                f'{", ".join(self.extensions)}); put the images in that '
                f'folder or any of its sub-folders')
        return data_list

    @staticmethod
    def _from_list(ann: str, folder: str) -> List[dict]:
        data_list = []
        with open(ann) as f:
            for line in f:
                parts = line.strip().rsplit(' ', 1)
                if not parts[0]:
                    continue
                info = dict(img_path=osp.join(folder, parts[0]))
                if len(parts) == 2 and parts[1].lstrip('-').isdigit():
                    info['gt_label'] = int(parts[1])
                elif len(parts) == 2:  # a path with a space, no label
                    info['img_path'] = osp.join(folder, line.strip())
                data_list.append(info)
        return data_list

    def _labelled(self, folder: str, paths: List[str]) -> List[dict]:
        """Class = first sub-folder, if every image is in one."""
        first = [osp.relpath(p, folder).split(os.sep)[0] for p in paths]
        if not paths or any(f == osp.basename(p)
                            for f, p in zip(first, paths)):
            return [dict(img_path=p) for p in paths]
        classes = sorted(set(first))
        self._metainfo['classes'] = tuple(classes)
        index = {c: i for i, c in enumerate(classes)}
        return [dict(img_path=p, gt_label=index[f])
                for p, f in zip(paths, first)]

    def _scan(self, folder: str) -> List[str]:
        paths = []
        for dirpath, dirnames, filenames in os.walk(folder,
                                                    followlinks=True):
            dirnames.sort()
            paths += [osp.join(dirpath, n) for n in sorted(filenames)
                      if n.lower().endswith(self.extensions)]
        return paths
