"""LocalMIM (Wang et al., CVPR 2023) ready for progressive freezing
(ViTFreeze, arXiv 2312.02194).

Decoders read intermediate blocks of the encoder and reconstruct HOG
features of the masked regions at one scale each (fine scales from shallow
blocks). With :class:`mmum.FreezeOutLR` the encoder's leading layers freeze
one after another: the frozen prefix then runs without autograd, and
:class:`mmum.DecoderPruningHook` drops a decoder (and its target) once the
block that feeds it is frozen.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.models.selfsup.mae import MAEViT
from mmpretrain.structures import DataSample
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmum.models.backbones.um_swin import UMSwinTransformer
from mmum.models.grid import check_grid
from mmum.models.layers import float_drop_rates
from mmum.models.necks.local_mim_decoder import released_sincos
from mmum.models.layers import autocast_off
from mmum.registry import MODELS
from .um_mae import UMMAE


def num_frozen_layers(layers: List[List[nn.Parameter]]) -> int:
    """Number of leading layers with no parameter requiring grad."""
    n = 0
    for params in layers:
        if any(p.requires_grad for p in params):
            break
        n += 1
    return n


@MODELS.register_module()
class LocalMIMViT(MAEViT):
    """MAE's ViT encoder returning the tokens after several blocks.

    Its layers are those of ``get_layer_depth``: layer 0 is the patch
    embedding with the class token (the position embedding is fixed), layer
    ``k`` is block ``k``. Leading layers whose parameters are all frozen
    (``requires_grad=False``) run under ``torch.no_grad``, so neither they
    nor the class token enter the autograd graph.

    Args:
        out_indices (Sequence[int] | int): 0-based blocks whose outputs
            are returned (negative: from the end). Defaults to
            (1, 3, 9, 11): blocks 2, 4, 10, 12 of ViT-B (``MAEViT``'s -1
            would give one scale; LocalMIM needs several).
        final_norm (bool): only False: each decoder normalises its input.
        with_cp (bool): Activation checkpointing of every block on the
            masked (pre-training) path: the block is recomputed in the
            backward instead of saving its activations. The dense path
            (``mask=None``, mmpretrain's ViT forward) has no checkpointing
            and refuses a gradient-tracking forward with it. Defaults to
            False.
        **kwargs: :class:`mmpretrain.models.MAEViT` arguments (``out_type``
            shapes the dense path's outputs only).
    """

    def __init__(self, out_indices: Sequence[int] = (1, 3, 9, 11),
                 final_norm: bool = False, with_cp: bool = False, **kwargs):
        if final_norm is not False:
            raise ValueError(
                f'LocalMIMViT has no final norm (final_norm={final_norm!r}):'
                ' every block output in out_indices feeds a decoder that '
                'normalises it itself. Use final_norm=False.')
        ratio = kwargs.get('mask_ratio', 0.75)
        if not 0 < ratio < 1:
            raise ValueError(
                f'LocalMIMViT: mask_ratio must be in (0, 1), got {ratio!r}: '
                'the loss is taken on the masked patches (0 masks none, '
                'every loss would be 0/0 = NaN) and the encoder needs '
                'visible ones (1 keeps none)')
        if isinstance(out_indices, int):  # as MAEViT: one block
            out_indices = [out_indices]
        super().__init__(out_indices=list(out_indices), final_norm=False,
                         **kwargs)
        float_drop_rates(self)  # no numpy scalars: no graph breaks
        L = self.patch_resolution[0] * self.patch_resolution[1]
        if not 1 <= int(L * (1 - ratio)) < L:
            raise ValueError(
                f'LocalMIMViT: mask_ratio={ratio} keeps '
                f'{int(L * (1 - ratio))} of the {L} patches; it must keep '
                'at least one and mask at least one')
        self.with_cp = with_cp

    def init_weights(self) -> None:
        """MAE's initialisation with the released model's fixed positions,
        unless ``init_cfg`` loads a checkpoint: then the loaded weights stay
        (mmpretrain's ``MAEViT`` would redraw the patch embedding, class
        token and positions after loading)."""
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            super(MAEViT, self).init_weights()  # VisionTransformer's: loads
            return
        super().init_weights()
        # the released model's fixed positions (mmpretrain's MAEViT table,
        # written by super(), is their row/column transpose)
        self.pos_embed.data.copy_(
            released_sincos(self.patch_resolution, self.embed_dims))

    def layer_params(self) -> List[List[nn.Parameter]]:
        """Trainable parameters of each layer, in ``get_layer_depth`` order."""
        return [[*self.patch_embed.parameters(), self.cls_token]
                ] + [list(layer.parameters()) for layer in self.layers]

    def num_frozen_layers(self) -> int:
        return num_frozen_layers(self.layer_params())

    def forward(self, x: torch.Tensor, mask: bool = True):
        """(B, 3, H, W) -> (tuple of (B, 1 + L_vis, C) per out index,
        (B, N) mask with 1 = masked, (B, N) ids_restore); without ``mask``
        the plain ViT features."""
        if not mask:
            if self.with_cp and torch.is_grad_enabled() and any(
                    p.requires_grad for p in self.parameters()):
                raise ValueError(
                    'LocalMIMViT(with_cp=True) checkpoints the masked path '
                    'only; the dense forward (mask=None) is mmpretrain\'s ViT'
                    ' forward, without checkpointing. Run it under '
                    'torch.no_grad() or build with with_cp=False.')
            return super().forward(x, mask=None)
        check_grid(self, x.shape[-2:], self.patch_resolution,
                   self.patch_embed.projection.stride)
        n_frozen = self.num_frozen_layers()
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and n_frozen == 0):
            B = x.shape[0]
            x = self.patch_embed(x)[0] + self.pos_embed[:, 1:]  # (B, N, C)
            x, mask, ids_restore = self.random_masking(x, self.mask_ratio)
            cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(
                B, -1, -1)
            x = torch.cat([cls_token, x], dim=1)  # (B, 1 + L_vis, C)
        outs = []
        for i, layer in enumerate(self.layers[:max(self.out_indices) + 1]):
            with torch.set_grad_enabled(grad and i + 1 >= n_frozen):
                if self.with_cp and torch.is_grad_enabled():
                    x = checkpoint(layer, x, use_reentrant=False)
                else:
                    x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs), mask, ids_restore


@MODELS.register_module()
class LocalMIM(BaseSelfSupervisor):
    """Local multi-scale masked image modeling.

    Decoder ``k`` reads ``backbone.out_indices[k]`` and predicts the target
    of ``target_generator.cell_sizes[k]``; the loss is the head's loss
    (MSE) over the masked regions, summed over scales with equal weights.
    At a scale coarser than the patch grid a cell is weighted by the
    fraction of its patches that are masked.

    Under autocast the encoder and decoders run in fp16 / bf16; the HOG
    targets (:class:`mmum.HOGTarget`, autocast disabled), the mask weights
    and the losses stay float32 (``local_losses``).

    Args:
        backbone (dict): e.g. ``mmum.LocalMIMViT``; must return
            ``(features, mask, ids_restore)`` and have ``num_frozen_layers``.
        neck (dict): Template of the decoders (``mmum.LocalMIMDecoder``);
            ``in_channels``, ``grid``, ``out_size`` and ``out_channels`` are
            filled in for each scale.
        head (dict): Loss head, e.g. ``mmpretrain.MIMHead`` with an L2
            ``PixelReconstructionLoss``.
        target_generator (dict): e.g. ``mmum.HOGTarget``.
    """

    def __init__(self, backbone: dict, neck: dict, head: dict,
                 target_generator: dict, data_preprocessor=None,
                 init_cfg=None) -> None:
        super().__init__(backbone=backbone, head=head,
                         target_generator=target_generator,
                         data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        cells = self.target_generator.cell_sizes
        out_indices = self.backbone.out_indices
        if len(cells) != len(out_indices):
            raise ValueError(
                f'LocalMIM: {len(out_indices)} backbone out_indices '
                f'{out_indices} but {len(cells)} target cell_sizes {cells}; '
                'give one scale per decoder')
        self.neck = nn.ModuleList(self.decoders(neck))
        # decoder k is fed by layer decoder_layers[k] (get_layer_depth order)
        self.decoder_layers = tuple(i + 1 for i in out_indices)
        self.pruned_decoders = set()
        # decoder -> its key in the loss dict at the built size, for the
        # pruning hook's log (set here, not in the forward: a mutated
        # attribute would make torch.compile recompile after the first step)
        self.decoder_loss_keys = {
            k: 'loss_{}x{}'.format(*decoder.out_size)
            for k, decoder in enumerate(self.neck)
        }

    def decoders(self, neck: dict) -> List[nn.Module]:
        img = self.backbone.img_size
        return [
            MODELS.build(
                dict(neck, in_channels=self.backbone.embed_dims,
                     grid=self.backbone.patch_resolution,
                     out_size=(img[0] // c, img[1] // c),
                     out_channels=self.target_generator.out_channels))
            for c in self.target_generator.cell_sizes
        ]

    def num_frozen_layers(self) -> int:
        return self.backbone.num_frozen_layers()

    def prune_decoder(self, k: int) -> List[nn.Parameter]:
        """Drop decoder ``k`` and its target from the forward pass; returns
        its parameters for the caller to remove from the optimizer."""
        if not 0 <= k < len(self.neck):
            raise ValueError(f'LocalMIM: no decoder {k}, there are '
                             f'{len(self.neck)}')
        self.pruned_decoders.add(k)
        return list(self.neck[k].parameters())

    def extract_feat(self, inputs: torch.Tensor):
        return self.backbone(inputs, mask=None)

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        feats, mask, ids_restore = self.backbone(inputs)
        grid = self.backbone.patch_resolution
        return self.local_losses(inputs, feats, ids_restore,
                                 mask.view(-1, 1, *grid))

    def local_losses(self, inputs: torch.Tensor, feats: Sequence,
                     where: torch.Tensor,
                     mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss of every decoder left: ``feats[k]`` feeds decoder ``k``
        with ``where`` (how to place the visible tokens), ``mask`` is
        (B, 1, h, w) on the patch grid, 1 = masked."""
        active = [k for k in range(len(self.neck))
                  if k not in self.pruned_decoders]
        cells = self.target_generator.cell_sizes
        targets = self.target_generator(inputs, [cells[k] for k in active])
        mask = mask.float()
        losses = {}
        for k, target in zip(active, targets):
            pred = self.neck[k](feats[k], where)  # (B, h * w, C)
            size = target.shape[-2:]
            if size[0] >= mask.shape[-2]:
                weight = F.interpolate(mask, size=size, mode='nearest')
            else:  # fraction of masked patches in each coarse cell
                weight = F.adaptive_avg_pool2d(mask, size)
            with autocast_off(inputs.device):
                # named by the target's size: the built size's name
                # (decoder_loss_keys) unless the input is another size
                losses['loss_{}x{}'.format(*size)] = self.head.loss(
                    pred.float(), target.flatten(2).transpose(1, 2),
                    weight.flatten(1))
        return losses


@MODELS.register_module()
class LocalMIMSwin(UMSwinTransformer):
    """UM-MAE's Swin encoder (compact input) for LocalMIM with freezing.

    Layers are those of ``get_layer_depth``: layer 0 is the patch embedding
    with the mask token, layer ``k`` is block ``k`` counted over all stages,
    a stage's patch merging going with its last block. Leading frozen
    layers run under ``torch.no_grad``. Returns the (normalised) map of
    every stage in ``out_indices``, as :class:`mmum.UMSwinTransformer`
    with ``positions='compact'`` (the only mode here: LocalMIM's forward
    does not receive the visible patches' original positions).
    """

    def __init__(self, *args, positions: str = 'compact', **kwargs) -> None:
        if positions != 'compact':
            raise ValueError(f"LocalMIMSwin supports positions='compact' "
                             f'only, got {positions!r}')
        super().__init__(*args, positions=positions, **kwargs)

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        if param_name == prefix + 'mask_token':
            return 0, sum(self.depths) + 2
        return super().get_layer_depth(param_name, prefix)

    def layer_params(self) -> List[List[nn.Parameter]]:
        """Trainable parameters of each layer, in ``get_layer_depth`` order."""
        layers = [[] for _ in range(sum(self.depths) + 1)]
        for name, p in self.named_parameters():
            depth, num = self.get_layer_depth(name)
            if depth < num - 1:
                layers[depth].append(p)
        return layers

    def num_frozen_layers(self) -> int:
        return num_frozen_layers(self.layer_params())

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """x: compact input (B, 3, H/2, W/2); mask: (B, H/2u, W/2u), 1 = unit
        replaced by the mask token -> tuple of (B, C_i, h_i, w_i)."""
        if mask is None:
            return super().forward(x)
        n_frozen = self.num_frozen_layers()
        grad = torch.is_grad_enabled()
        self.check_compact_input(x.shape[-2:])
        with torch.set_grad_enabled(grad and n_frozen == 0):
            x, hw_shape = self.embed(x, mask)  # (B, L, C)
        outs, depth = [], 0
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                depth += 1
                with torch.set_grad_enabled(grad and depth >= n_frozen):
                    x = block(x, hw_shape)
            merge = stage.downsample is not None
            if merge and self.out_after_downsample:
                with torch.set_grad_enabled(grad and depth >= n_frozen):
                    x, hw_shape = stage.downsample(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.view(-1, *hw_shape, self.num_features[i])
                            .permute(0, 3, 1, 2).contiguous())
            if merge and not self.out_after_downsample:
                with torch.set_grad_enabled(grad and depth >= n_frozen):
                    x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)


@MODELS.register_module()
class UMLocalMIM(LocalMIM):
    """LocalMIM on a hierarchical encoder with UM-MAE's uniform masking.

    The pipeline's ``mmum.UniformMasking`` leaves one visible patch per 2x2
    cell; the encoder (e.g. :class:`mmum.LocalMIMSwin`) sees the compact
    image of those patches, and decoder ``k``
    (:class:`mmum.LocalMIMCompactDecoder`) reads stage
    ``backbone.out_indices[k]``, puts its tokens back in the full patch grid
    and predicts the HOG of ``target_generator.cell_sizes[k]``; the loss is
    taken on the dropped patches. Decoder ``k`` is pruned once the last
    block of its stage is frozen.

    Args:
        patch_size (int): Masking unit in pixels. Defaults to 16.
        **kwargs: :class:`LocalMIM` arguments.
    """
    masks = UMMAE.masks  # UM-MAE's masks and compact image, shared
    compact = UMMAE.compact

    def __init__(self, *args, patch_size: int = 16, **kwargs) -> None:
        self.patch_size = patch_size
        super().__init__(*args, **kwargs)
        depths = self.backbone.depths
        self.decoder_layers = tuple(
            sum(depths[:i + 1]) for i in self.backbone.out_indices)

    def decoders(self, neck: dict) -> List[nn.Module]:
        bb = self.backbone
        compact = bb.patch_embed.init_input_size  # (H/2, W/2)
        full = (2 * compact[0], 2 * compact[1])
        units = compact[0] // self.patch_size  # visible patches per side
        return [
            MODELS.build(
                dict(neck, in_channels=bb.num_features[i],
                     unit_ratio=bb.patch_resolution[0] / 2**i / units,
                     grid=(full[0] // self.patch_size,
                           full[1] // self.patch_size),
                     out_size=(full[0] // c, full[1] // c),
                     out_channels=self.target_generator.out_channels))
            for i, c in zip(bb.out_indices, self.target_generator.cell_sizes)
        ]

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        mask, index, secondary = self.masks(inputs, data_samples)
        feats = self.backbone(self.compact(inputs, index), secondary)
        return self.local_losses(inputs, feats, index, mask[:, None])
