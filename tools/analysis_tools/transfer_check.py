"""Smoke-check that a pre-trained checkpoint runs in a downstream config.

Loads CHECKPOINT's ``backbone.`` weights into the backbone of CONFIG (a
detector, segmentor or classifier of configs/mmdet, configs/mmseg,
configs/finetune, or one of your own) with the config's own loader, then runs
one forward and backward pass of the whole model (``mode='tensor'``: backbone,
neck and heads, no targets needed) on two random images of ``--size``
pixels, on CPU, with SyncBN as BN. It reports how many backbone tensors came
from the checkpoint, the output shapes, and any trainable backbone parameter
that got no gradient (which would stop DDP training).

    python tools/analysis_tools/transfer_check.py \\
        configs/mmdet/gfl_um_mae_swin_t_fpn_lsj-25e_coco.py \\
        work_dirs/um_mae_swin_t_100e/epoch_100.pth --size 256

Exit status 0 when the check passes, 1 when it fails (the reason printed).
"""
import argparse
import sys

# torch and the toolboxes are imported after the arguments are parsed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('config', help='downstream config file')
    parser.add_argument('checkpoint',
                        help='pre-training or fine-tuning checkpoint (its '
                        'backbone. weights are loaded)')
    parser.add_argument('--size', type=int, default=128,
                        help='side of the random test images (default 128)')
    parser.add_argument('--prefix', default='backbone.',
                        help="key prefix of the encoder in the checkpoint "
                        "(default 'backbone.')")
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                        help='override config entries (mmengine syntax)')
    return parser.parse_args(argv)


def _tensors(out):
    import torch
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)
    elif hasattr(out, 'bboxes') or hasattr(out, 'pred_sem_seg'):
        for v in getattr(out, 'values', lambda: [])():
            yield from _tensors(v)


def _samples(scope, size, n):
    """Data samples with the metainfo the toolbox's heads read."""
    meta = dict(img_shape=(size, size), ori_shape=(size, size),
                pad_shape=(size, size), scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta) for _ in range(n)]
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta) for _ in range(n)]
    from mmpretrain.structures import DataSample
    return [DataSample(metainfo=meta) for _ in range(n)]


def point_init_cfg(backbone: dict, checkpoint: str, prefix: str) -> None:
    """Make ``backbone``'s ``init_cfg`` load ``checkpoint`` (keeping the
    config's Pretrained loader and scope, else mmum's strict one)."""
    init = backbone.get('init_cfg')
    if isinstance(init, dict) and init.get('type') == 'Pretrained':
        init.update(checkpoint=checkpoint, prefix=prefix)
    else:
        backbone['init_cfg'] = dict(type='Pretrained', _scope_='mmum',
                                    checkpoint=checkpoint, prefix=prefix)


def check(cfg, checkpoint: str, size: int = 128, prefix: str = 'backbone.',
          log=print) -> dict:
    """Run the check on an mmengine ``Config``; returns a report dict:
    ``loaded`` / ``total`` backbone tensors equal to the checkpoint's,
    ``outputs`` (shapes), ``no_grad`` (trainable backbone parameters without
    a gradient). Raises on a checkpoint that does not load."""
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope, MODELS
    from mmengine.runner.checkpoint import _load_checkpoint

    import mmum  # noqa: F401
    scope = cfg.get('default_scope') or 'mmum'
    if scope in ('mmdet', 'mmseg'):
        __import__(f'{scope}.models')  # registers the toolbox's modules
    model_cfg = cfg.model
    if 'data_preprocessor' not in model_cfg and cfg.get('data_preprocessor'):
        model_cfg.data_preprocessor = cfg.data_preprocessor
    point_init_cfg(model_cfg.backbone, checkpoint, prefix)
    with DefaultScope.overwrite_default_scope(scope):
        model = revert_sync_batchnorm(MODELS.build(model_cfg))
        model.init_weights()  # loads the checkpoint (strict loaders refuse)

    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    ours = model.backbone.state_dict()
    loaded = sum(
        1 for k, v in ours.items() if prefix + k in state
        and state[prefix + k].shape == v.shape
        and torch.equal(state[prefix + k].to(v.dtype), v))
    log(f'backbone: {loaded} of {len(ours)} tensors equal the checkpoint\'s '
        f'{prefix}* entries (the others are new for this task, e.g. output '
        f'norms, or resized)')

    torch.manual_seed(0)
    imgs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
            for _ in range(2)]
    model.train()
    data = model.data_preprocessor(
        dict(inputs=imgs, data_samples=_samples(scope, size, 2)), False)
    out = model(data['inputs'], data['data_samples'], mode='tensor')
    outs = [t for t in _tensors(out) if t.is_floating_point()]
    if not outs:
        raise RuntimeError('the model returned no tensors in mode=tensor')
    sum(t.float().mean() for t in outs).backward()
    shapes = [tuple(t.shape) for t in outs]
    log(f'forward: {len(outs)} output tensors, e.g. {shapes[:4]}')
    no_grad = [n for n, p in model.backbone.named_parameters()
               if p.requires_grad and p.grad is None]
    if no_grad:
        log(f'backward: {len(no_grad)} trainable backbone parameters got no '
            f'gradient (DDP would stop on them): {no_grad[:6]}')
    else:
        log('backward: every trainable backbone parameter got a gradient')
    return dict(loaded=loaded, total=len(ours), outputs=shapes,
                no_grad=no_grad)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        ns = argparse.Namespace()
        DictAction(option_strings=['--cfg-options'], dest='opts')(
            None, ns, args.cfg_options)
        cfg.merge_from_dict(ns.opts)
    try:
        report = check(cfg, args.checkpoint, args.size, args.prefix)
    except Exception as e:  # noqa: BLE001  the reason, not a traceback
        print(f'transfer check FAILED: {type(e).__name__}: {e}')
        return 1
    ok = report['loaded'] > 0 and not report['no_grad']
    print('transfer check', 'passed' if ok else 'FAILED', f'({args.config})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
