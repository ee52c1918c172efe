"""Test (evaluate) a checkpoint with mmengine's Runner.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --out results.pkl
    tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os
import os.path as osp

# mmum, mmengine and torch are imported in main(), after the arguments are
# parsed, so that --help and a wrong argument answer at once


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where to save the metrics')
    parser.add_argument('--out', help='dump the predictions to this pickle')
    parser.add_argument(
        '--cfg-options', nargs='+', metavar='KEY=VALUE',
        help='override config entries, e.g. test_dataloader.batch_size=8; '
        'merged into the config last')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    import mmum  # noqa: F401  registers the mmum scope, installs compat shims
    from mmengine.config import Config, DictAction
    from mmengine.evaluator import DumpResults
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmum.utils.dist import setup_cpu_distributed
    if args.cfg_options is not None:
        ns = argparse.Namespace()
        DictAction(option_strings=['--cfg-options'], dest='opts')(
            None, ns, args.cfg_options)
        args.cfg_options = ns.opts
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    cfg.load_from = args.checkpoint
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if cfg.get('default_scope') is None:
        cfg.default_scope = 'mmum'
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('test_dataloader') is None:
        raise ValueError(f'{args.config} has no test_dataloader/test_cfg/'
                         'test_evaluator, so there is nothing to test '
                         '(pre-training configs usually have none).')
    setup_cpu_distributed(cfg, args.launcher)
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg
              else RUNNERS.build(cfg))
    if args.out:
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    if os.environ.get('TORCHELASTIC_ERROR_FILE'):
        # under torchrun: the report ends with the first failing rank's error
        from torch.distributed.elastic.multiprocessing.errors import record
        record(main)()
    else:
        main()
