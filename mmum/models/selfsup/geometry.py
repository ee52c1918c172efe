"""One setting, several places: the geometry of a pre-training model.

A pre-training config states the patch size, the image size and the mask
unit in several places: the backbone, the decoder (neck), the loss head,
the algorithm and the pipeline's mask transform. Changed in one place only,
the model used to fail deep inside (``The size of tensor a (785) must match
the size of tensor b (197)`` in mmpretrain's MAE decoder). :func:`attach`
checks them where they meet:

- at build (:func:`model_problems`): the decoder's prediction size
  (``neck.patch_size`` / ``encoder_stride``), ``head.patch_size``, the
  algorithm's mask unit (``model.patch_size``, ``model.mask_unit``), the
  backbone's patch size, output stride and patch grid (``img_size``); and
  (:func:`config_problems`) the train pipeline's crop size and mask
  transform (``UniformMasking.patch_size``, ``SimMIMMaskGenerator``'s
  ``input_size`` / ``mask_patch_size`` / ``model_patch_size``) against them;
- at the first training batch (:func:`batch_problems`): the images and the
  masks the pipeline made (crop size, ``UniformMasking.patch_size``,
  ``SimMIMMaskGenerator.input_size`` / ``model_patch_size``) against the
  model.

Each problem names both places and their values; a ``ValueError`` lists
them all. :func:`attach` runs for every model a Runner builds
(``Runner.build_model``, see :mod:`mmum.engine.runner_fixes`).
"""
import math
from typing import List, Optional

import torch
from torch import nn

IN_CHANS = 3


def _type(module) -> str:
    return type(module).__name__


def _pred_unit(linear) -> Optional[int]:
    """Side of the pixel patch an MAE-style ``decoder_pred`` predicts."""
    if not isinstance(linear, nn.Linear):
        return None
    side = math.isqrt(linear.out_features // IN_CHANS)
    return side if side * side * IN_CHANS == linear.out_features else None


def backbone_patch(backbone) -> Optional[int]:
    """Stride of the backbone's first patch embedding (its patch size)."""
    embeds = getattr(backbone, 'patch_embeds', None)  # Twins / PCPVT
    embed = embeds[0] if embeds is not None else getattr(
        backbone, 'patch_embed', None)
    conv = getattr(embed, 'projection', None) or getattr(embed, 'proj', None)
    return conv.stride[0] if isinstance(conv, nn.Conv2d) else None


def backbone_stride(backbone) -> Optional[int]:
    """Total stride of the backbone's last stage, if it can be read."""
    if isinstance(getattr(backbone, 'stride', None), int):  # mmum PVT
        return backbone.stride
    embeds = getattr(backbone, 'patch_embeds', None)
    if embeds is not None:
        return math.prod(e.projection.stride[0] for e in embeds)
    patch, stages = backbone_patch(backbone), getattr(backbone, 'stages',
                                                      None)
    if patch and stages is not None:  # Swin: a 2x2 merge per downsample
        merges = sum(getattr(s, 'downsample', None) is not None
                     for s in stages)
        return patch * 2**merges
    return None


def _head_patch(head) -> Optional[int]:
    p = getattr(head, 'patch_size', None)
    return p if isinstance(p, int) else None


def _mask_unit(model):
    """(value, where) of the algorithm's mask / reconstruction unit."""
    if isinstance(getattr(model, 'mask_unit', None), int):
        return model.mask_unit, 'model.mask_unit'
    if isinstance(getattr(model, 'patch_size', None), int):
        return model.patch_size, 'model.patch_size (the mask unit)'
    patch = backbone_patch(model.backbone)
    if patch:
        return patch, 'model.backbone.patch_size'
    return None, None


def model_problems(model) -> List[str]:
    """Disagreements between the settings of a built pre-training model."""
    neck, head = getattr(model, 'neck', None), getattr(model, 'head', None)
    backbone = getattr(model, 'backbone', None)
    if backbone is None or (neck is None and head is None):
        return []
    problems = []
    algo = _type(model)
    decoder = getattr(neck, 'decoder', None)
    if algo == 'SimMIM' or isinstance(decoder, nn.Sequential) and any(
            isinstance(m, nn.PixelShuffle) for m in decoder):
        # SimMIM: the decoder unfolds each output token to an
        # encoder_stride^2 pixel block; the head compares per-patch masks
        patch, stride = backbone_patch(backbone), backbone_stride(backbone)
        shuffle = [m for m in decoder or [] if isinstance(m, nn.PixelShuffle)]
        up = shuffle[0].upscale_factor if shuffle else None
        if up and stride and up != stride:
            problems.append(
                f'model.neck.encoder_stride is {up}, but the backbone '
                f'({_type(backbone)}) outputs one token per {stride} px '
                f'(patch size {patch} x its merges): set encoder_stride='
                f'{stride}')
        hp = _head_patch(head)
        if hp and patch and hp != patch:
            problems.append(
                f'model.head.patch_size is {hp}, but the backbone\'s patch '
                f'size (model.backbone.patch_size, the mask cell of '
                f'SimMIMMaskGenerator.model_patch_size) is {patch}')
        return problems
    unit, where = _mask_unit(model)
    if unit is None:
        return problems
    pred = _pred_unit(getattr(neck, 'decoder_pred', None))
    if pred and pred != unit:
        problems.append(
            f'model.neck.patch_size is {pred} (its decoder_pred predicts '
            f'{pred}x{pred} px per token), but {where} is {unit}')
    hp = _head_patch(head)
    if hp and hp != unit:
        problems.append(f'model.head.patch_size is {hp}, but {where} is '
                        f'{unit}')
    pos = getattr(neck, 'decoder_pos_embed', None)
    grid = getattr(backbone, 'patch_resolution', None)
    if (algo == 'MAE' and isinstance(pos, torch.Tensor) and grid
            and pos.shape[1] - 1 != grid[0] * grid[1]):
        size = getattr(backbone, 'img_size', None)
        problems.append(
            f'model.neck.num_patches is {pos.shape[1] - 1}, but the '
            f'backbone makes a {grid[0]}x{grid[1]} = {grid[0] * grid[1]} '
            f'patch grid (model.backbone.img_size {size} / patch_size '
            f'{backbone_patch(backbone)})')
    return problems


def _masks(data_samples, name):
    try:
        return [torch.as_tensor(getattr(ds, name)) for ds in data_samples]
    except (AttributeError, KeyError, TypeError):
        return None


def batch_problems(model, inputs: torch.Tensor, data_samples) -> List[str]:
    """Disagreements between the first batch (what the pipeline made) and
    the model."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        return []
    H, W = inputs.shape[-2:]
    backbone = model.backbone
    masks = _masks(data_samples or [], 'mask')
    problems = []
    algo = _type(model)
    if algo == 'SimMIM' and masks:
        h, w = masks[0].shape[-2:]
        patch = backbone_patch(backbone)
        if patch and (h * patch, w * patch) != (H, W):
            problems.append(
                f'the pipeline makes {H}x{W} images (its crop size) and '
                f'{h}x{w} masks (SimMIMMaskGenerator: input_size / '
                f'model_patch_size = {h}), but one mask cell is one '
                f'{patch}-px patch of the backbone (model.backbone.'
                f'patch_size), i.e. {h * patch}x{w * patch} px: make the crop'
                ' size, SimMIMMaskGenerator.input_size and the backbone\'s '
                'img_size one value, and model_patch_size the backbone\'s '
                'patch size')
    unit = getattr(model, 'patch_size', None)
    if algo in ('UMMAE', 'UMLocalMIM') and masks and isinstance(unit, int):
        h, w = masks[0].shape[-2:]
        if (h * unit, w * unit) != (H, W) and H % h == 0 and W % w == 0:
            problems.append(
                f'the pipeline\'s mmum.UniformMasking masks {H // h}-px '
                f'units of the {H}x{W} images (its patch_size), but '
                f'model.patch_size (the model\'s mask unit) is {unit}')
    grid = getattr(backbone, 'patch_resolution', None)
    patch = backbone_patch(backbone)
    if (algo == 'MAE' and grid and patch
            and (H // patch, W // patch) != tuple(grid)):
        problems.append(
            f'the pipeline makes {H}x{W} images (its crop size), but '
            f'model.backbone.img_size is {getattr(backbone, "img_size", "?")}'
            f' ({grid[0]}x{grid[1]} patches of {patch} px): set the '
            'backbone\'s img_size (and the decoder\'s num_patches) to the '
            'crop size, or crop to the img_size')
    return problems


def train_pipeline(cfg) -> list:
    """The train pipeline of a config, looking through dataset wrappers
    (``[]`` if there is none)."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    while isinstance(dataset, dict) and 'pipeline' not in dataset:
        dataset = dataset.get('dataset') or (dataset.get('datasets')
                                             or [None])[0]
    return list(dataset.get('pipeline') or []) if isinstance(
        dataset, dict) else []


def _arg(transform: dict, name: str):
    """A transform's argument as given, else its class default."""
    if name in transform:
        return transform[name]
    import inspect

    from mmum.registry import TRANSFORMS
    cls = TRANSFORMS.get(transform['type'])
    if cls is None:
        return None
    param = inspect.signature(cls.__init__).parameters.get(name)
    return None if param is None else param.default


def _side(value) -> Optional[int]:
    """A square size (int or (s, s)) as an int."""
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(set(value)) == 1:
        return int(value[0])
    return None


def config_problems(cfg, model) -> List[str]:
    """Disagreements between a config's train pipeline (crop size, mask
    transform) and the built ``model``."""
    pipeline = [t for t in train_pipeline(cfg) if isinstance(t, dict)]
    backbone = getattr(model, 'backbone', None)
    if not pipeline or backbone is None:
        return []
    crop = None
    for t in pipeline:
        name = str(t.get('type', '')).split('.')[-1]
        if name in ('RandomResizedCrop', 'CenterCrop', 'RandomCrop'):
            crop = (name, _side(t.get('scale', t.get('crop_size'))))
    problems = []
    patch = backbone_patch(backbone)
    for t in pipeline:
        name = str(t.get('type', '')).split('.')[-1]
        if name == 'SimMIMMaskGenerator':
            size, cell, unit = (_arg(t, k) for k in (
                'input_size', 'mask_patch_size', 'model_patch_size'))
            if size and cell and size % cell:
                problems.append(
                    f'SimMIMMaskGenerator.input_size {size} is not a multiple'
                    f' of its mask_patch_size {cell}')
            if cell and unit and cell % unit:
                problems.append(
                    f'SimMIMMaskGenerator.mask_patch_size {cell} is not a '
                    f'multiple of its model_patch_size {unit}')
            if unit and patch and unit != patch:
                problems.append(
                    f'SimMIMMaskGenerator.model_patch_size is {unit}, but '
                    f'model.backbone.patch_size is {patch}')
            if size and crop and crop[1] and size != crop[1]:
                problems.append(
                    f'SimMIMMaskGenerator.input_size is {size}, but the '
                    f'pipeline\'s {crop[0]} makes {crop[1]} px images')
        if name == 'UniformMasking':
            unit, own = _arg(t, 'patch_size'), getattr(model, 'patch_size',
                                                       None)
            if isinstance(own, int) and unit and unit != own:
                problems.append(
                    f'the pipeline\'s UniformMasking.patch_size is {unit}, '
                    f'but model.patch_size (the model\'s mask unit) is {own}')
    grid = getattr(backbone, 'patch_resolution', None)
    if (_type(model) == 'MAE' and grid and patch and crop and crop[1]
            and crop[1] != grid[0] * patch):
        problems.append(
            f'the pipeline\'s {crop[0]} makes {crop[1]} px images, but '
            f'model.backbone.img_size is {getattr(backbone, "img_size", "?")}'
            f' ({grid[0]}x{grid[1]} patches of {patch} px)')
    return problems


def _raise(problems, when):
    raise ValueError(
        f'the pre-training settings disagree ({when}): '
        + '; '.join(problems) + '. A patch size, image size or mask unit '
        'appears in several places of a config (backbone, neck, head, the '
        "algorithm, the pipeline's crop and mask transform): change them "
        'together (docs/own_config.md).')


def attach(model: nn.Module, cfg=None) -> nn.Module:
    """Check ``model`` (and, with the config, its train pipeline) now
    (``ValueError``) and its first training batch (a forward pre-hook that
    removes itself); returns ``model``."""
    try:
        problems = model_problems(model)
        if cfg is not None:
            problems += config_problems(cfg, model)
    except Exception:  # a model this check does not understand: no verdict
        problems = []
    if problems:
        _raise(problems, 'at build')
    if not hasattr(model, 'backbone'):
        return model
    handle = None

    def first_batch(module, args, kwargs):
        if kwargs.get('mode', args[2] if len(args) > 2 else None) != 'loss':
            return None
        handle.remove()
        inputs = kwargs.get('inputs', args[0] if args else None)
        samples = kwargs.get('data_samples', args[1] if len(args) > 1
                             else None)
        found = batch_problems(module, inputs, samples)
        if found:
            _raise(found, 'first batch')
        return None

    handle = model.register_forward_pre_hook(first_batch, with_kwargs=True)
    return model
