"""Draw MIM reconstructions: original / masked input / reconstruction /
reconstruction pasted into the visible patches, one row per image.

    python tools/analysis_tools/visualize_reconstruction.py \\
        configs/um_mae/swin_t_200e.py work_dirs/demo/iter_60.pth \\
        img1.jpg img2.png --out reconstruction.png [--size 256] [--seed 0]

UM-MAE and GreenMIM models draw pixels; LocalMIM models (which predict HOG)
draw the HOG target and prediction at one scale (``--hog-cell``). The same
code (:mod:`mmum.visualization.reconstruction`) draws the pictures of
``mmum.ReconstructionHook`` during training.

UM-MAE's masks are drawn by the config's ``UniformMasking`` (same patch size
and secondary ratio). A model trained with ``norm_pix`` predicts every patch
normalised by its own mean and std, which a real user does not know for the
dropped patches; as MAE's visualisation does, they are undone with the
statistics of visible patches -- for UM-MAE the visible patch of the same
2x2 cell (Uniform Masking leaves exactly one), for GreenMIM the nearest
visible mask unit.
"""
import argparse

# torch and mmum are imported after the arguments are parsed (fast --help)


def pixel_prediction(model, inputs, samples):
    """De-normalised per-patch predictions (B, L, p*p*3) (see
    ``UMMAE.reconstruct``), the masks and the secondary masks."""
    import torch
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
    parser.add_argument('--size', type=int, default=None,
                        help='crop size; default: what the model is built '
                        'for')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--hog-cell', type=int, default=None,
                        help='LocalMIM: HOG cell size to draw')
    args = parser.parse_args()

    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    import mmum  # noqa: F401
    from mmum.registry import MODELS
    from mmum.visualization import visualize
    from mmum.visualization.reconstruction import (find_uniform_masking,
                                                   model_kind)

    cfg = Config.fromfile(args.config)
    if 'data_preprocessor' not in cfg.model and cfg.get('data_preprocessor'):
        # as the Runner does: the top-level preprocessor (e.g. to_rgb)
        cfg.model.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(cfg.model)
    model_kind(model)  # TypeError for a model it cannot draw
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()

    visualize(model, args.images, args.out, size=args.size, seed=args.seed,
              masking=find_uniform_masking(cfg), hog_cell=args.hog_cell)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
