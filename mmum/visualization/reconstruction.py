"""Original / mask / reconstruction pictures for MIM models."""
from typing import List, Optional

import numpy as np
import torch


def _to_image(x: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 RGB."""
    x = x.detach().float().cpu() * std.view(3, 1, 1) + mean.view(3, 1, 1)
    return x.clamp(0, 255).permute(1, 2, 0).round().byte().numpy()


def _patch_map(mask: torch.Tensor, size) -> np.ndarray:
    """(h, w) patch mask -> (H, W) bool pixel mask."""
    H, W = size
    m = mask.detach().cpu().bool()
    return m.repeat_interleave(H // m.shape[0], 0).repeat_interleave(
        W // m.shape[1], 1).numpy()


def reconstruction_figure(inputs: torch.Tensor,
                          recon: torch.Tensor,
                          masks: torch.Tensor,
                          secondary: Optional[torch.Tensor] = None,
                          mean=(123.675, 116.28, 103.53),
                          std=(58.395, 57.12, 57.375)) -> np.ndarray:
    """Grid of rows ``original | masked input | reconstruction | recon. +
    visible``, one row per image, as an (H, W, 3) uint8 RGB array.

    Args:
        inputs, recon: (B, 3, H, W) in the data preprocessor's normalised
            space (``mean``/``std`` undo it).
        masks: (B, h, w), 1 = dropped patch.
        secondary: (B, h, w), 1 = visible patch given to the encoder as a
            mask token (UM-MAE's secondary masking); drawn hatched-grey.
            Dropped patches are drawn dark grey.
    """
    mean, std = torch.tensor(mean), torch.tensor(std)
    rows = []
    for b in range(inputs.shape[0]):
        orig = _to_image(inputs[b], mean, std)
        rec = _to_image(recon[b], mean, std)
        drop = _patch_map(masks[b], orig.shape[:2])
        masked = orig.copy()
        masked[drop] = 48
        if secondary is not None:
            sec = _patch_map(secondary[b], orig.shape[:2])
            yy, xx = np.mgrid[:orig.shape[0], :orig.shape[1]]
            hatch = sec & (((yy + xx) // 3) % 2 == 0)
            masked[sec] = 128
            masked[hatch] = 200
        pasted = np.where(drop[..., None], rec, orig)
        gap = np.full((orig.shape[0], 4, 3), 255, np.uint8)
        rows.append(
            np.concatenate([orig, gap, masked, gap, rec, gap, pasted], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)


def save_reconstruction(path: str,
                        inputs: torch.Tensor,
                        recon: torch.Tensor,
                        masks: torch.Tensor,
                        secondary: Optional[torch.Tensor] = None,
                        titles: List[str] = ('original', 'masked input',
                                             'reconstruction',
                                             'reconstruction + visible'),
                        **kwargs) -> str:
    """Write :func:`reconstruction_figure` to ``path`` as a PNG, with column
    titles; returns ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    grid = reconstruction_figure(inputs, recon, masks, secondary, **kwargs)
    h, w = grid.shape[:2]
    fig = plt.figure(figsize=(w / 100, h / 100 + 0.4), dpi=100)
    ax = fig.add_axes([0, 0, 1, h / (h + 40)])
    ax.imshow(grid)
    ax.axis('off')
    step = (w + 4) / len(titles)
    for i, title in enumerate(titles):
        fig.text((i + 0.5) * step / w, 1 - 20 / (h + 40), title,
                 ha='center', va='center', fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path


def visualize_um_mae(model, image_paths, out: str, size: int = 256,
                     seed: int = 0, masking: Optional[dict] = None) -> str:
    """Draw a UM-MAE model's reconstructions of ``image_paths`` into the PNG
    ``out``: each image is resized (short edge) and centre-cropped to
    ``size``, masked by ``mmum.UniformMasking(**masking)`` with
    ``np.random.seed(seed)``, and reconstructed by ``model.reconstruct``."""
    from mmengine.dataset import Compose, default_collate
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([
            dict(type='LoadImageFromFile'),
            dict(type='ResizeEdge', scale=size, edge='short'),
            dict(type='CenterCrop', crop_size=size),
            dict(type='mmum.UniformMasking', **(masking or {})),
            dict(type='PackInputs', algorithm_keys=['secondary_mask']),
        ])
    np.random.seed(seed)
    items = [pipeline(dict(img_path=p, sample_idx=i))
             for i, p in enumerate(image_paths)]
    model.eval()
    data = model.data_preprocessor(default_collate(items))
    inputs, samples = data['inputs'], data['data_samples']
    recon = model.reconstruct(inputs, samples)
    return save_reconstruction(
        out, inputs, recon,
        torch.stack([torch.as_tensor(s.mask) for s in samples]),
        torch.stack([torch.as_tensor(s.secondary_mask) for s in samples]))
