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
    """De-normalised per-patch predictions (B, L, p*p*3) (see
    ``UMMAE.reconstruct``), the masks and the secondary masks."""
    mask, _, _ = model.masks(inputs, samples)
    pred = model.head.patchify(model.reconstruct(inputs, samples))
    second = torch.stack([torch.as_tensor(s.secondary_mask) for s in samples])
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
    from mmengine.runner import load_checkpoint

    import mmum  # noqa: F401
    from mmum.registry import MODELS
    from mmum.visualization import visualize_um_mae

    cfg = Config.fromfile(args.config)
    model = MODELS.build(cfg.model)
    if not hasattr(model, 'compact'):
        raise TypeError(f'{type(model).__name__} is not a UM-MAE model '
                        '(mmum.UMMAE); this tool draws UM-MAE reconstructions')
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()

    visualize_um_mae(model, args.images, args.out, size=args.size,
                     seed=args.seed, masking=find_uniform_masking(cfg))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
