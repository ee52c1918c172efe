"""mmum demo: UM-MAE Swin-T pre-training for a few iterations on real photos.

The photos are the ones scikit-image ships (no download). The run uses the
real config ``configs/um_mae/swin_t_200e.py`` with only the data, batch size
and schedule overridden (its AMP runs as bf16 autocast on a CPU with native
bf16, fp32 on other CPUs: ``mmum.CPUAmpOptimWrapper``), writes a checkpoint,
and draws original / mask / reconstruction for every photo. While it trains,
``mmum.ReconstructionHook`` draws the same pictures and ``mmum.KNNEvalHook``
measures a weighted k-NN accuracy on crops of the photos labelled by photo
(README "Watching a run").

    python tools/demo.py [--iters 60] [--work-dir work_dirs/demo]
"""
import argparse
import json
import os
import os.path as osp

import numpy as np

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field',
          'immunohistochemistry', 'retina')


def write_photos(folder: str) -> list:
    """Save scikit-image's bundled colour photos as PNGs in ``folder``."""
    import cv2
    from skimage import data
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in PHOTOS:
        if not hasattr(data, name):
            continue
        img = getattr(data, name)()
        if img.ndim != 3:
            continue
        path = osp.join(folder, f'{name}.png')
        cv2.imwrite(path, np.ascontiguousarray(img[..., :3][..., ::-1]))
        paths.append(path)
    return paths


def write_knn_set(photos: list, folder: str, train_per: int = 6,
                  val_per: int = 3, seed: int = 0) -> str:
    """A tiny labelled set in mmpretrain's CustomDataset layout: random
    square crops (half the short side) of every photo, labelled by photo,
    ``folder/{train,val}/<photo>/<i>.png``."""
    import cv2
    rng = np.random.default_rng(seed)
    for path in photos:
        img = cv2.imread(path)
        name = osp.splitext(osp.basename(path))[0]
        side = min(img.shape[:2]) // 2
        for split, n in (('train', train_per), ('val', val_per)):
            os.makedirs(osp.join(folder, split, name), exist_ok=True)
            for i in range(n):
                y = rng.integers(img.shape[0] - side + 1)
                x = rng.integers(img.shape[1] - side + 1)
                cv2.imwrite(osp.join(folder, split, name, f'{i}.png'),
                            img[y:y + side, x:x + side])
    return folder


def demo_cfg(work_dir: str, data_dir: str, iters: int, batch_size: int,
             knn_dir: str = None, photos: list = ()):
    from mmengine.config import Config

    from mmum.utils.dist import cpu_fallback_amp
    cfg = Config.fromfile(
        osp.join(osp.dirname(__file__), '..', 'configs/um_mae/swin_t_200e.py'))
    cfg.work_dir = work_dir
    cfg.resume = False
    cfg.train_dataloader.update(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type='InfiniteSampler', shuffle=True))
    cfg.train_dataloader.dataset = dict(
        type='CustomDataset', data_root=data_dir, with_label=False,
        pipeline=cfg.train_pipeline)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    # a 10 % warm-up, then cosine; runs under 20 iterations skip the
    # warm-up (a 1-iteration one would leave cosine starting at its floor)
    warmup = iters // 10 if iters >= 20 else 0
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
             end=warmup),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup,
             end=iters, eta_min=1e-5)
    ][0 if warmup else 1:]
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.optim_wrapper.accumulative_counts = 1
    # the config's AMP: fp16 on a GPU; on a CPU bf16 autocast where it is
    # native (AVX512-BF16 / AMX), else fp32 (the log says which and why)
    cpu_fallback_amp(cfg)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=min(10, iters))
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', by_epoch=False, interval=iters,
        max_keep_ckpts=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    # watching the run: the hooks commented out in the config, turned on
    every = max(1, iters // 2)
    if knn_dir:
        cfg.custom_hooks.append(dict(
            type='mmum.KNNEvalHook', by_epoch=False, interval=every,
            train_dataset=dict(type='CustomDataset', data_root=knn_dir,
                               data_prefix='train'),
            val_dataset=dict(type='CustomDataset', data_root=knn_dir,
                             data_prefix='val'),
            img_size=128, batch_size=8, num_workers=0))
    if photos:
        cfg.custom_hooks.append(dict(
            type='mmum.ReconstructionHook', by_epoch=False, interval=every,
            images=list(photos)))
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=60)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    args = parser.parse_args()

    from mmengine.runner import Runner

    import mmum  # noqa: F401  registers mmum.*
    from mmum.visualization import visualize_um_mae

    work_dir = osp.abspath(args.work_dir)
    data_dir = osp.join(work_dir, 'photos')
    photos = write_photos(data_dir)
    knn_dir = write_knn_set(photos, osp.join(work_dir, 'knn_photos'))
    cfg = demo_cfg(work_dir, data_dir, args.iters, args.batch_size, knn_dir,
                   photos)
    runner = Runner.from_cfg(cfg)
    runner.train()

    # one fixed draw of the masks for every photo
    png = visualize_um_mae(runner.model, photos,
                           osp.join(work_dir, 'reconstruction.png'))
    ckpt = osp.join(work_dir, f'iter_{args.iters}.pth')
    with open(osp.join(work_dir, 'knn_eval.jsonl')) as f:
        knn = [json.loads(line) for line in f]
    pics = sorted(os.listdir(osp.join(work_dir, 'reconstructions')))
    print('\n' + '=' * 70)
    print(f'checkpoint     : {ckpt}')
    print(f'reconstruction : {png}')
    print(f'while training : {osp.join(work_dir, "reconstructions")}/ '
          f'({", ".join(pics)}; also in {runner.log_dir}/vis_data)')
    print(f'k-NN accuracy  : {osp.join(work_dir, "knn_eval.jsonl")} (also in '
          'the log and vis_data/scalars.json); crops labelled by photo, '
          f'{len(photos)} classes, chance {100 / len(photos):.1f} %:')
    for row in knn:
        print(f'                 iter {row["iter"]:>4}: top-1 '
              f'{row["top1"]:5.1f} %, top-5 {row["top5"]:5.1f} % '
              f'({row["time"]:.1f} s)')
    print(f'training log   : {runner.log_dir}')
    print('=' * 70)


if __name__ == '__main__':
    main()
