"""Time saved by progressive freezing (FreezeOutLR + DecoderPruningHook).

Trains LocalMIM with 0, 1, 2, ... leading encoder layers frozen (and the
decoders they feed pruned), through the same code paths as a real run, and
prints the step time of each freezing stage next to that of a never-frozen
copy (steps interleaved, so that load on a shared machine hits both alike).
The whole-schedule time is the stage/baseline ratios weighted by how long
each stage lasts under FreezeOutLR (``t_0``, ``spacing``). ViTFreeze
reports 12.5% saved on ViT-B/16 (GPU).

The defaults (a ViT-Tiny-sized encoder with ViT-B's 12 blocks and decoder
layout, 128² images so that the 4-32 px HOG cells still tile them, CPU)
take a few minutes on two cores::

    python tools/analysis_tools/benchmark_freezeout.py
    python tools/analysis_tools/benchmark_freezeout.py --arch b --device cuda \
        --batch-size 128
"""
import argparse
import statistics
import time

# torch, mmpretrain and mmum are imported where they are used, after the
# arguments are parsed, so that --help answers at once

ARCHS = {
    'tiny': dict(embed_dims=192, num_layers=12, num_heads=3,
                 feedforward_channels=768),
    'small': dict(embed_dims=384, num_layers=12, num_heads=6,
                  feedforward_channels=1536),
    'b': 'b',
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', choices=sorted(ARCHS), default='tiny')
    p.add_argument('--img-size', type=int, default=128)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--iters', type=int, default=5,
                   help='timed steps per stage (median is reported)')
    p.add_argument('--warmup-iters', type=int, default=2)
    p.add_argument('--t0', type=float, default=0.8)
    p.add_argument('--spacing', default='cubic',
                   choices=['linear', 'squared', 'cubic'])
    p.add_argument('--no-prune', action='store_true',
                   help='keep every decoder (freezing alone)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=1,
                   help='CPU threads; 1 keeps timings steady on a shared '
                   'machine (OpenMP spinning distorts them)')
    return p.parse_args()


def build(args):
    from mmpretrain.engine.optimizers import \
        LearningRateDecayOptimWrapperConstructor

    import mmum  # noqa: F401  registers the mmum scope
    from mmum.engine.schedulers.freezeout import FreezeOutLR
    from mmum.registry import MODELS
    model = MODELS.build(
        dict(
            type='mmum.LocalMIM',
            data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor'),
            backbone=dict(type='mmum.LocalMIMViT', arch=ARCHS[args.arch],
                          img_size=args.img_size, patch_size=16),
            neck=dict(type='mmum.LocalMIMDecoder'),
            head=dict(type='mmpretrain.MIMHead',
                      loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                criterion='L2')),
            target_generator=dict(type='mmum.HOGTarget'))).to(args.device)
    optim = LearningRateDecayOptimWrapperConstructor(
        dict(type='OptimWrapper',
             optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=1.0))(model)
    sched = FreezeOutLR(optim, t_0=args.t0, spacing=args.spacing, end=1000,
                        by_epoch=False)
    return model, optim, sched


def step_time(model, optim, img, device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    start = time.perf_counter()
    optim.update_params(sum(model.loss(img, None).values()))
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_stage(runs, img, args):
    """Median step time of each ``(model, optim)`` in ``runs``, their steps
    interleaved so that a change in machine load hits all of them alike."""
    times = [[] for _ in runs]
    for i in range(args.warmup_iters + args.iters):
        for t, (model, optim) in zip(times, runs):
            step = step_time(model, optim, img, args.device)
            if i >= args.warmup_iters:
                t.append(step)
    return [statistics.median(t) for t in times]


def main():
    args = parse_args()
    import torch

    from mmum.engine.schedulers.freezeout import freeze_params, freeze_times
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, optim, sched = build(args)
    torch.manual_seed(0)
    base_model, base_optim, _ = build(args)  # never frozen
    model.train(), base_model.train()
    img = torch.randn(args.batch_size, 3, args.img_size, args.img_size,
                      device=args.device)
    num_layers = sched.num_layers  # patch embedding + blocks
    t = freeze_times(num_layers, args.t0, args.spacing)
    print(f'LocalMIM arch={args.arch} img={args.img_size} '
          f'batch={args.batch_size} device={args.device} '
          f'threads={torch.get_num_threads()} FreezeOut t_0={args.t0} '
          f'{args.spacing}{" (no decoder pruning)" if args.no_prune else ""}')
    print('step times are medians; each stage is timed alternating with the '
          'no-freezing baseline (stage 0 compares two identical models: its '
          'ratio shows the timing noise; the schedule counts it as 1)')
    print(f'{"stage":>5} {"frozen":>9} {"decoders":>8} {"step ms":>9} '
          f'{"base ms":>9} {"ratio":>6} {"schedule":>9}')
    total = 0.
    for k in range(num_layers):  # stage k: layers 0 .. k-1 frozen
        if k:
            sched.freeze_layers([k - 1])
            if not args.no_prune:
                for d, layer in enumerate(model.decoder_layers):
                    if layer < k and d not in model.pruned_decoders:
                        freeze_params(optim, model.prune_decoder(d))
        step, base = time_stage([(model, optim), (base_model, base_optim)],
                                img, args)
        frac = t[k] - (t[k - 1] if k else 0.)  # share of the schedule
        # stage 0 is the baseline's computation: count it as 1, its measured
        # ratio only shows the noise
        total += (step / base if k else 1.) * frac
        print(f'{k:>5} {f"0..{k - 1}" if k else "-":>9} '
              f'{len(model.neck) - len(model.pruned_decoders):>8} '
              f'{step * 1e3:>9.1f} {base * 1e3:>9.1f} {step / base:>6.3f} '
              f'{frac:>9.3f}',
              flush=True)
    print(f'whole schedule: {total:.3f} of the no-freezing baseline, '
          f'time saved {100 * (1 - total):.1f}% '
          f'(ViTFreeze paper: 12.5%, target >= 20%)')


if __name__ == '__main__':
    main()
