"""Pictures of the model's reconstructions while it trains."""
import os
import os.path as osp
from typing import List, Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DATASETS, DefaultScope

from mmum.registry import HOOKS


@HOOKS.register_module()
class ReconstructionHook(Hook):
    """Every ``interval`` epochs (``by_epoch``) or iterations, draws the
    model's reconstructions of a fixed set of images into
    ``<work_dir>/<out_dir>/{epoch,iter}_<n>.png`` and sends the same picture
    to the Visualizer's backends (``add_image('reconstruction', ...)``:
    ``vis_data/vis_image``, TensorBoard, W&B).

    The picture is the one of ``tools/analysis_tools/
    visualize_reconstruction.py`` (the same code,
    :mod:`mmum.visualization.reconstruction`): one row per image,
    ``original | masked input | reconstruction | reconstruction + visible``
    for UM-MAE, GreenMIM and mmpretrain's MAE (e.g. UM-MAE's ViT pilot),
    and for LocalMIM / UMLocalMIM (which predict
    HOG, not pixels) ``original | masked input | HOG target | predicted HOG
    | predicted + visible`` at one HOG scale (``hog_cell``). The images and
    masks are the same at every interval: UM-MAE's uniform masks are drawn
    once (the config's ``UniformMasking`` settings, seed ``seed``), the
    masks of GreenMIM, MAE and LocalMIM-ViT are drawn with every RNG seeded
    with ``seed``; the training RNG states and every module's train/eval
    mode are given back afterwards. Runs on rank 0 only (no collective calls).

    Args:
        images (list[str], optional): Image files to draw.
        dataset (dict, optional): Or an mmpretrain dataset config (e.g. the
            val set); ``num_images`` of its images, evenly spaced, are used.
        num_images (int): How many dataset images. Defaults to 4.
        interval (int): Every ``interval`` epochs / iterations.
        by_epoch (bool): Count epochs (True) or iterations.
        img_size (int, optional): Centre-crop size; defaults to the size the
            model's decoder is built for.
        seed (int): Seed of the masks.
        hog_cell (int, optional): LocalMIM's HOG scale to draw (a cell size
            of its target); defaults to the largest <= 16 px.
        out_dir (str): Folder under the work dir.
    """

    priority = 'NORMAL'

    def __init__(self,
                 images: Optional[Sequence[str]] = None,
                 dataset: Optional[dict] = None,
                 num_images: int = 4,
                 interval: int = 1,
                 by_epoch: bool = True,
                 img_size: Optional[int] = None,
                 seed: int = 0,
                 hog_cell: Optional[int] = None,
                 out_dir: str = 'reconstructions'):
        if (images is None) == (dataset is None):
            raise ValueError('ReconstructionHook: give either `images` (a '
                             'list of image files) or `dataset` (a dataset '
                             f'config), got images={images!r}, '
                             f'dataset={dataset!r}')
        for name, v in (('interval', interval), ('num_images', num_images)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f'ReconstructionHook: {name} must be a '
                                 f'positive integer, got {v!r}')
        if images is not None:
            if isinstance(images, str) or not images:
                raise ValueError('ReconstructionHook: images must be a '
                                 f'non-empty list of files, got {images!r}')
            missing = [p for p in images if not osp.isfile(p)]
            if missing:
                raise FileNotFoundError(
                    f'ReconstructionHook: no such image file(s): {missing}')
        self.images = list(images) if images is not None else None
        self.dataset = dataset
        self.num_images = num_images
        self.interval = interval
        self.by_epoch = by_epoch
        self.img_size = img_size
        self.seed = seed
        self.hog_cell = hog_cell
        self.out_dir = out_dir
        self.items = None

    def image_paths(self) -> List[str]:
        if self.images is not None:
            return self.images
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            ds = DATASETS.build(dict(self.dataset, pipeline=[]))
        n = min(self.num_images, len(ds))
        if n == 0:
            raise ValueError(
                f'ReconstructionHook: dataset {self.dataset} is empty')
        step = len(ds) / n
        return [ds.get_data_info(int(i * step))['img_path'] for i in range(n)]

    def before_train(self, runner) -> None:
        if is_main_process():
            self.prepare(runner)

    def prepare(self, runner) -> None:
        from mmum.visualization.reconstruction import (find_uniform_masking,
                                                       load_images,
                                                       model_image_size,
                                                       model_kind)
        model = self.unwrap(runner.model)
        kind = model_kind(model)  # TypeError for a model it cannot draw
        size = self.img_size or model_image_size(model)
        self.items = load_images(self.image_paths(), size, kind,
                                 find_uniform_masking(runner.cfg), self.seed)

    @staticmethod
    def unwrap(model):
        return model.module if is_model_wrapper(model) else model

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch and self.every_n_train_iters(
                runner, self.interval):
            self.draw(runner, f'iter_{runner.iter + 1:06d}', runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self.draw(runner, f'epoch_{runner.epoch + 1:04d}', runner.iter)

    def draw(self, runner, name: str, step: int) -> Optional[str]:
        """Write the picture; returns its path (None on other ranks)."""
        if not is_main_process():
            return None
        from mmum.visualization.reconstruction import (
            figure, preprocessor_stats, reconstruct, save_figure, titles)
        if self.items is None:
            self.prepare(runner)
        model = self.unwrap(runner.model)
        result = reconstruct(model, self.items, self.seed, self.hog_cell)
        grid = figure(result, **preprocessor_stats(model))
        folder = osp.join(runner.work_dir, self.out_dir)
        os.makedirs(folder, exist_ok=True)
        path = save_figure(osp.join(folder, f'{name}.png'), grid,
                           titles(result))
        runner.visualizer.add_image('reconstruction', grid, step=step)
        runner.logger.info(f'reconstruction: wrote {path}')
        return path
