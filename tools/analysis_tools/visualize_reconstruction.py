"""Draw UM-MAE reconstructions: original / masked input / reconstruction /
reconstruction pasted into the visible patches, one row per image.

    python tools/analysis_tools/visualize_reconstruction.py \\
        configs/um_mae/swin_t_200e.py work_dirs/demo/iter_60.pth \\
        img1.jpg img2.png --out reconstruction.png [--size 256] [--seed 0]

The masks are drawn by the config's ``UniformMasking`` (same patch size and
secondary ratio). A model trained with ``norm_pix`` predicts every patch
normalised by its own mean and std, which a real user does not know for the
dropped patches; as MAE's visualisation does, they are undone with the
statistics of visible patches -- here the visible patch of the same 2x2
cell (Uniform Masking leaves exactly one).
"""
import argparse

import numpy as np
import torch


def find_uniform_masking(cfg) -> dict:
    """The ``UniformMasking`` settings of the config's training pipeline."""
    pipelines = [cfg.get('train_pipeline') or []]
    try:
        pipelines.append(cfg.train_dataloader.dataset.pipeline)
    except AttributeError:
        pass
    for pipeline in pipelines:
        for t in pipeline:
            if str(t.get('type', '')).split('.')[-1] == 'UniformMasking':
                return {k: v for k, v in t.items() if k != 'type'}
    return {}


def pixel_prediction(model, inputs, samples):
    """Denormalised per-patch predictions (B, L, p*p*3), the masks and the
    secondary masks in full-grid layout."""
    mask, index, secondary = model.masks(inputs, samples)
    with torch.no_grad():
        latent = model.backbone(model.compact(inputs, index), secondary)[-1]
        pred = model.neck(latent, index)  # B, L, p*p*3
    if model.head.norm_pix:
        target = model.head.patchify(inputs)
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True) + 1e-6)**.5
        B, h, w = mask.shape
        rows = torch.arange(h, device=mask.device).view(-1, 1) // 2
        cols = torch.arange(w, device=mask.device).view(1, -1) // 2
        cell = (rows * (w // 2) + cols).flatten()  # cell of every patch
        source = index[:, cell]  # B, L: its cell's visible patch
        mean = mean.gather(1, source.unsqueeze(-1))
        std = std.gather(1, source.unsqueeze(-1))
        pred = pred * std + mean
    second = torch.stack([s.secondary_mask for s in samples])
    return pred, mask, second


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+')
    parser.add_argument('--out', default='reconstruction.png')
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    from mmengine.config import Config
    from mmengine.dataset import Compose, default_collate
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint

    import mmum  # noqa: F401
    from mmum.registry import MODELS
    from mmum.visualization import save_reconstruction

    cfg = Config.fromfile(args.config)
    model = MODELS.build(cfg.model)
    if not hasattr(model, 'compact'):
        raise TypeError(f'{type(model).__name__} is not a UM-MAE model '
                        '(mmum.UMMAE); this tool draws UM-MAE reconstructions')
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([
            dict(type='LoadImageFromFile'),
            dict(type='ResizeEdge', scale=args.size, edge='short'),
            dict(type='CenterCrop', crop_size=args.size),
            dict(type='mmum.UniformMasking', **find_uniform_masking(cfg)),
            dict(type='PackInputs', algorithm_keys=['secondary_mask']),
        ])
    np.random.seed(args.seed)
    items = [pipeline(dict(img_path=p, sample_idx=i))
             for i, p in enumerate(args.images)]
    data = model.data_preprocessor(default_collate(items))
    inputs, samples = data['inputs'], data['data_samples']
    for s in samples:  # PackInputs leaves algorithm keys as numpy arrays
        s.set_field(torch.as_tensor(s.secondary_mask), 'secondary_mask')
    pred, mask, secondary = pixel_prediction(model, inputs, samples)
    recon = model.head.unpatchify(pred)
    save_reconstruction(args.out, inputs, recon, mask, secondary)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
