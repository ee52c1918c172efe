"""Train (or pre-train) a model with mmengine's Runner.

Examples::

    python tools/train.py configs/um_mae/swin_t_200e.py
    python tools/train.py CONFIG --resume                 # latest in work dir
    python tools/train.py CONFIG --resume work_dirs/x/iter_100.pth
    python tools/train.py CONFIG --resume --resume-from-intact  # skip a
                                          # truncated latest checkpoint
    tools/dist_train.sh CONFIG 8 --amp                    # 8 GPUs (or CPUs)
    python tools/train.py CONFIG --compile                # torch.compile
"""
import argparse
import os
import os.path as osp

# mmum, mmengine and torch are imported in main(), after the arguments are
# parsed, so that --help and a wrong argument answer at once


def cfg_options_dict(values):
    """``KEY=VALUE`` strings of ``--cfg-options`` as mmengine's DictAction
    parses them (``None`` stays ``None``)."""
    if values is None:
        return None
    from mmengine.config import DictAction
    ns = argparse.Namespace()
    DictAction(option_strings=['--cfg-options'], dest='opts')(None, ns,
                                                              values)
    return ns.opts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; without a path, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--resume-from-intact', action='store_true',
        help='when resuming and the checkpoint to resume from is truncated or'
        ' corrupt, resume from the newest intact checkpoint of the work dir '
        'instead (without it such a run stops and names both files)')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (fp16 on GPUs; '
                        'without CUDA bf16 autocast on CPUs with native bf16,'
                        ' else fp32)')
    parser.add_argument(
        '--compile', action='store_true',
        help="torch.compile the model's loss (sets compile=True; the "
        'optimizer step stays eager, see mmum/engine/compile.py)')
    parser.add_argument(
        '--cfg-options', nargs='+', metavar='KEY=VALUE',
        help='override config entries, e.g. train_dataloader.batch_size=2 '
        'key="[a,b]"; merged into the config last')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def merge_args(cfg, args):
    """Apply the command line to the config (``--cfg-options`` last)."""
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if cfg.get('default_scope') is None:
        cfg.default_scope = 'mmum'
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.compile:
        cfg.compile = True
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    options = cfg_options_dict(args.cfg_options)
    if options is not None:
        cfg.merge_from_dict(options)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    import mmum  # noqa: F401  registers the mmum scope, installs compat shims
    from mmengine.config import Config
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmum.datasets.checks import check_train_data
    from mmum.engine.checkpoint import check_resume_checkpoint
    from mmum.engine.hooks.freezeout_hook import check_freezeout_config
    from mmum.utils.dist import cpu_fallback_amp, setup_cpu_distributed
    cfg = merge_args(Config.fromfile(args.config), args)
    check_train_data(cfg)  # clear errors for a missing / empty data root
    check_freezeout_config(cfg)  # FreezeOutLR needs its FreezeOutHook
    # a broken checkpoint to resume from: name it and the newest intact one
    check_resume_checkpoint(cfg, from_intact=args.resume_from_intact)
    cpu_fallback_amp(cfg)
    setup_cpu_distributed(cfg, args.launcher)
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg
              else RUNNERS.build(cfg))
    runner.train()
    return runner


if __name__ == '__main__':
    if os.environ.get('TORCHELASTIC_ERROR_FILE'):
        # under torchrun (tools/dist_train.sh): each rank records its error,
        # and torchrun ends its report with the first failing rank's
        # traceback ("Root Cause"), not another rank's follow-up error
        from torch.distributed.elastic.multiprocessing.errors import record
        record(main)()
    else:
        main()
