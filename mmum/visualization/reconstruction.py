"""Original / mask / reconstruction pictures for MIM models.

One code path for ``tools/analysis_tools/visualize_reconstruction.py``, the
demo and :class:`mmum.ReconstructionHook`:

* :func:`load_images` -- fixed images (and, for UM-MAE, fixed masks);
* :func:`reconstruct` -- the model's prediction for them, any of UM-MAE,
  GreenMIM, LocalMIM (HOG at one scale);
* :func:`reconstruction_figure` / :func:`hog_figure` -- the picture grid;
* :func:`save_figure` -- the PNG with column titles.
"""
import contextlib
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

RECON_TITLES = ('original', 'masked input', 'reconstruction',
                'reconstruction + visible')
HOG_TITLES = ('original', 'masked input', 'HOG target', 'predicted HOG',
              'predicted + visible')


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


def _masked(orig: np.ndarray, drop: np.ndarray,
            sec: Optional[np.ndarray]) -> np.ndarray:
    """Dropped patches dark grey, secondary-masked ones hatched grey."""
    masked = orig.copy()
    masked[drop] = 48
    if sec is not None:
        yy, xx = np.mgrid[:orig.shape[0], :orig.shape[1]]
        masked[sec] = 128
        masked[sec & (((yy + xx) // 3) % 2 == 0)] = 200
    return masked


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4
               ) -> np.ndarray:
    """Rows of equal-size (H, W, 3) uint8 images -> one image with white
    ``gap``-px lines between them."""
    out = []
    for row in rows:
        line = []
        for img in row:
            line += [img, np.full((img.shape[0], gap, 3), 255, np.uint8)]
        line = np.concatenate(line[:-1], 1)
        out += [line, np.full((gap, line.shape[1], 3), 255, np.uint8)]
    return np.concatenate(out[:-1], 0)


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
        sec = None if secondary is None else _patch_map(
            secondary[b], orig.shape[:2])
        pasted = np.where(drop[..., None], rec, orig)
        rows.append([orig, _masked(orig, drop, sec), rec, pasted])
    return image_grid(rows)


def hog_glyphs(cell: int, nbins: int = 9) -> np.ndarray:
    """(nbins, cell, cell) float line glyphs: bin ``b`` (gradient angle
    ``(b + 0.5) * pi / nbins`` of :class:`mmum.HOGTarget`, measured from the
    y-axis, i.e. the gradient (sin, cos) in image x-right / y-down
    coordinates) is drawn as a line through the cell centre along the edge,
    perpendicular to the gradient."""
    yy, xx = np.mgrid[:cell, :cell] - (cell - 1) / 2
    glyphs = []
    for b in range(nbins):
        t = (b + 0.5) * np.pi / nbins
        # distance to the edge line, whose normal is the gradient
        dist = np.abs(xx * np.sin(t) + yy * np.cos(t))
        glyphs.append(np.clip(1.0 - dist, 0, 1))
    return np.stack(glyphs)


def hog_image(hist: torch.Tensor, cell: int, nbins: int = 9) -> np.ndarray:
    """(3 * nbins, h, w) HOG (channel-major, as :class:`mmum.HOGTarget`)
    -> (h * cell, w * cell, 3) uint8 picture: per cell, each orientation's
    line is drawn as bright as its magnitude summed over RGB (white = the
    largest of the picture)."""
    h = hist.detach().float().cpu().clamp(min=0)
    h = h.view(3, nbins, *h.shape[-2:]).sum(0).numpy()  # nbins, h, w
    img = np.einsum('bhw,byx->hywx', h, hog_glyphs(cell, nbins))
    img = img.reshape(h.shape[1] * cell, h.shape[2] * cell)
    img = (255 * img / max(img.max(), 1e-6)).round().astype(np.uint8)
    return np.repeat(img[..., None], 3, -1)


def hog_figure(inputs: torch.Tensor, target: torch.Tensor,
               pred: torch.Tensor, masks: torch.Tensor,
               secondary: Optional[torch.Tensor] = None, cell: int = 16,
               mean=(123.675, 116.28, 103.53),
               std=(58.395, 57.12, 57.375)) -> np.ndarray:
    """Rows ``original | masked input | HOG target | predicted HOG |
    predicted on the masked patches + target on the visible ones``.

    Args:
        inputs: (B, 3, H, W) normalised images.
        target, pred: (B, 3 * nbins, H / cell, W / cell).
        masks, secondary: (B, h, w) as in :func:`reconstruction_figure`.
    """
    mean, std = torch.tensor(mean), torch.tensor(std)
    nbins = target.shape[1] // 3
    rows = []
    for b in range(inputs.shape[0]):
        orig = _to_image(inputs[b], mean, std)
        drop = _patch_map(masks[b], orig.shape[:2])
        sec = None if secondary is None else _patch_map(
            secondary[b], orig.shape[:2])
        tgt = hog_image(target[b], cell, nbins)
        prd = hog_image(pred[b], cell, nbins)
        rows.append([orig, _masked(orig, drop, sec), tgt, prd,
                     np.where(drop[..., None], prd, tgt)])
    return image_grid(rows)


def save_figure(path: str, grid: np.ndarray,
                titles: Sequence[str] = RECON_TITLES) -> str:
    """Write ``grid`` to ``path`` as a PNG with a 40-px band of column
    titles on top: the PNG is exactly (H + 40, W) pixels. Returns ``path``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    h, w = grid.shape[:2]
    fig = plt.figure(figsize=(w / 100, (h + 40) / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, h / (h + 40)])
    ax.imshow(grid, interpolation='nearest')
    ax.axis('off')
    step = (w + 4) / len(titles)
    # 11 pt, smaller when a title would overflow its column (small images)
    size = min(11, step / (0.8 * max(len(t) for t in titles)))
    for i, title in enumerate(titles):
        fig.text((i + 0.5) * step / w, 1 - 20 / (h + 40), title,
                 ha='center', va='center', fontsize=size)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reconstruction(path: str,
                        inputs: torch.Tensor,
                        recon: torch.Tensor,
                        masks: torch.Tensor,
                        secondary: Optional[torch.Tensor] = None,
                        titles: Sequence[str] = RECON_TITLES,
                        **kwargs) -> str:
    """Write :func:`reconstruction_figure` to ``path`` as a PNG, with column
    titles; returns ``path``."""
    return save_figure(
        path, reconstruction_figure(inputs, recon, masks, secondary, **kwargs),
        titles)


# ----------------------------------------------------------- models
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


def model_kind(model) -> str:
    """``'um_mae'``, ``'green_mim'``, ``'local_mim'`` (ViT, masks drawn in
    the encoder), ``'um_local_mim'`` (uniform masks from the pipeline) or
    ``'mae'`` (mmpretrain's MAE, e.g. with mmum's UMViT); raises TypeError
    for a model that reconstructs nothing mmum can draw."""
    names = [c.__name__ for c in type(model).__mro__]
    if 'UMLocalMIM' in names:
        return 'um_local_mim'
    if 'LocalMIM' in names:
        return 'local_mim'
    if 'UMMAE' in names:
        return 'um_mae'
    if 'GreenMIM' in names:
        return 'green_mim'
    if 'MAE' in names:
        return 'mae'
    raise TypeError(
        f'{type(model).__name__}: mmum draws reconstructions of mmum.UMMAE, '
        'mmum.GreenMIM, mmum.LocalMIM, mmum.UMLocalMIM and mmpretrain.MAE '
        'models only')


def model_image_size(model) -> int:
    """The input size the model's decoder was built for (pixels)."""
    kind = model_kind(model)
    if kind == 'um_local_mim':  # the encoder is built for the compact half
        return 2 * model.backbone.patch_embed.init_input_size[0]
    if kind == 'local_mim':
        size = model.backbone.img_size
        return size[0] if isinstance(size, (tuple, list)) else size
    if kind == 'mae':
        size = model.backbone.img_size
        return size[0] if isinstance(size, (tuple, list)) else size
    unit = model.patch_size if kind == 'um_mae' else model.mask_unit
    return int(round(model.neck.num_patches**0.5)) * unit


@contextlib.contextmanager
def seeded(seed: int):
    """Run with every RNG (torch CPU/CUDA, NumPy, random) seeded with
    ``seed`` and give back the outer states afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() \
        and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def load_images(image_paths: Sequence[str], size: int, kind: str,
                masking: Optional[dict] = None, seed: int = 0) -> List[dict]:
    """Packed samples of ``image_paths`` (those that can be loaded; the
    others are left out with a warning naming them): short edge resized to
    ``size``, centre crop ``size``; for UM-MAE-style models also masked by
    ``mmum.UniformMasking(**masking)`` drawn with seed ``seed`` (the
    caller's RNG states are kept)."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope

    uniform = kind in ('um_mae', 'um_local_mim')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([
            # an unreadable image is left out, with a warning naming it
            dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
            dict(type='ResizeEdge', scale=size, edge='short'),
            dict(type='CenterCrop', crop_size=size),
            *([dict(type='mmum.UniformMasking', **(masking or {}))]
              if uniform else []),
            dict(type='PackInputs',
                 algorithm_keys=['secondary_mask'] if uniform else []),
        ])
    with seeded(seed):
        items = [pipeline(dict(img_path=p, sample_idx=i))
                 for i, p in enumerate(image_paths)]
    items = [x for x in items if x is not None]
    if not items:
        raise ValueError(f'none of the images {list(image_paths)} could be '
                         f'loaded (see the warnings above)')
    return items


def green_mim_mask(model, size: int, seed: int) -> torch.Tensor:
    """A fixed GreenMIM mask (H/unit, W/unit) bool, True = masked, as
    ``GreenMIM.random_mask`` draws it but from its own generator."""
    h = w = size // model.mask_unit
    keep = int(h * w * (1 - model.mask_ratio))
    noise = torch.rand(h * w, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(h * w, dtype=torch.bool)
    mask[noise.argsort()[:keep]] = False
    return mask.view(h, w)


def _nearest_visible_stats(model, inputs, mask):
    """Per-unit mean/std (B, L, 1) of the nearest visible unit of every
    unit (itself if visible; ``mask`` (B, h, w) bool, True = masked): how
    GreenMIM's and MAE's normalised predictions are turned back into pixels
    for the picture."""
    target = model.head.patchify(inputs)  # B, L, u*u*3
    mean = target.mean(-1, keepdim=True)
    std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
    B, h, w = mask.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    dist = torch.cdist(pos, pos)[None] + 1e9 * mask.flatten(1)[:, None].cpu()
    source = dist.argmin(-1).to(inputs.device).unsqueeze(-1)  # B, L, 1
    return mean.gather(1, source), std.gather(1, source)


def _denormalised(model, inputs, pred, masks):
    """(B, L, u*u*3) predictions -> (B, 3, H, W) image; normalised-pixel
    predictions take the statistics of the nearest visible unit."""
    if model.head.norm_pix:
        mean, std = _nearest_visible_stats(model, inputs, masks)
        pred = pred * std + mean
    return model.head.unpatchify(pred)


@torch.no_grad()
def reconstruct(model, items: List[dict], seed: int = 0,
                hog_cell: Optional[int] = None) -> Dict[str, object]:
    """The model's prediction for the packed ``items`` (see
    :func:`load_images`), in eval mode; every RNG is seeded with ``seed``
    for the draw (GreenMIM's, MAE's and LocalMIM-ViT's masks) and restored.

    Returns a dict with ``kind``, ``inputs`` (B, 3, H, W) normalised,
    ``masks`` (B, h, w) 1 = dropped, ``secondary`` (B, h, w) or None, and
    ``recon`` (B, 3, H, W) normalised pixels, or for LocalMIM ``target`` and
    ``pred`` (B, 27, H/c, W/c) HOG at cell ``hog_cell`` (default: the
    largest cell <= 16 px) with ``cell``.
    """
    from mmengine.dataset import default_collate

    kind = model_kind(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with seeded(seed):
            data = model.data_preprocessor(default_collate(items), False)
            inputs, samples = data['inputs'], data['data_samples']
            out = dict(kind=kind, inputs=inputs, secondary=None)
            if kind == 'um_mae':
                out['recon'] = model.reconstruct(inputs, samples)
                out['masks'] = torch.stack(
                    [torch.as_tensor(s.mask) for s in samples])
                out['secondary'] = torch.stack(
                    [torch.as_tensor(s.secondary_mask) for s in samples])
            elif kind == 'green_mim':
                mask = green_mim_mask(model, inputs.shape[-1], seed)
                latent = model.backbone(inputs, mask)[-1]
                pred = model.neck(latent, mask)  # B, L, u*u*3
                out['masks'] = mask.expand(len(inputs), -1, -1)
                out['recon'] = _denormalised(model, inputs, pred,
                                             out['masks'])
            elif kind == 'mae':
                latent, mask, ids_restore = model.backbone(inputs)
                pred = model.neck(latent, ids_restore)  # B, L, p*p*3
                h = int(round(mask.shape[1]**0.5))
                out['masks'] = mask.view(-1, h, h).bool()
                out['recon'] = _denormalised(model, inputs, pred,
                                             out['masks'])
            else:
                out.update(_local_mim_hog(model, inputs, samples, kind,
                                          hog_cell))
    finally:
        for m, training in modes:
            m.training = training
    return out


def _local_mim_hog(model, inputs, samples, kind, hog_cell):
    cells = model.target_generator.cell_sizes
    cell = hog_cell or max([c for c in cells if c <= 16] or [min(cells)])
    if cell not in cells:
        raise ValueError(f'hog_cell={cell} is not among the model\'s HOG '
                         f'cell sizes {tuple(cells)}')
    k = cells.index(cell)
    if kind == 'local_mim':
        feats, mask, ids_restore = model.backbone(inputs)
        pred = model.neck[k](feats[k], ids_restore)
        masks = mask.view(-1, *model.backbone.patch_resolution)
        secondary = None
    else:
        masks, index, secondary = model.masks(inputs, samples)
        feats = model.backbone(model.compact(inputs, index), secondary)
        pred = model.neck[k](feats[k], index)
        secondary = torch.stack(
            [torch.as_tensor(s.secondary_mask) for s in samples])
    target = model.target_generator(inputs, [cell])[0]  # B, 27, H/c, W/c
    pred = pred.transpose(1, 2).reshape(target.shape)
    return dict(target=target, pred=pred, masks=masks, secondary=secondary,
                cell=cell)


def figure(result: Dict[str, object], **kwargs) -> np.ndarray:
    """The picture grid of a :func:`reconstruct` result."""
    if 'recon' in result:
        return reconstruction_figure(result['inputs'], result['recon'],
                                     result['masks'], result['secondary'],
                                     **kwargs)
    return hog_figure(result['inputs'], result['target'], result['pred'],
                      result['masks'], result['secondary'],
                      cell=result['cell'], **kwargs)


def titles(result: Dict[str, object]) -> Sequence[str]:
    return RECON_TITLES if 'recon' in result else HOG_TITLES


def preprocessor_stats(model) -> dict:
    """``mean``/``std`` of the model's data preprocessor (3-tuples)."""
    dp = model.data_preprocessor
    if getattr(dp, '_enable_normalize', True) and hasattr(dp, 'mean'):
        return dict(mean=tuple(dp.mean.flatten().tolist()),
                    std=tuple(dp.std.flatten().tolist()))
    return dict(mean=(0., 0., 0.), std=(1., 1., 1.))


def visualize(model, image_paths: Sequence[str], out: str,
              size: Optional[int] = None, seed: int = 0,
              masking: Optional[dict] = None,
              hog_cell: Optional[int] = None) -> str:
    """Draw ``model``'s reconstructions of ``image_paths`` into the PNG
    ``out`` (see the module docstring); returns ``out``."""
    kind = model_kind(model)
    items = load_images(image_paths, size or model_image_size(model), kind,
                        masking, seed)
    result = reconstruct(model, items, seed, hog_cell)
    return save_figure(out, figure(result, **preprocessor_stats(model)),
                       titles(result))


def visualize_um_mae(model, image_paths, out: str, size: int = 256,
                     seed: int = 0, masking: Optional[dict] = None) -> str:
    """:func:`visualize` for a UM-MAE model at ``size`` px (kept for the
    demo and older scripts)."""
    return visualize(model, image_paths, out, size, seed, masking)


__all__ = [
    'reconstruction_figure', 'hog_figure', 'save_figure',
    'save_reconstruction', 'find_uniform_masking', 'load_images',
    'reconstruct', 'figure', 'visualize', 'visualize_um_mae'
]
