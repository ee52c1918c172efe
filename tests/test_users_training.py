"""What users hit when training (issue 26): every downstream config under
2-process DDP, frozen stages at build, ``frozen_stages`` across toolboxes,
UperNet with one image per process, own data in the usual shapes, a small
class count, a smaller encoder than the decoder's, quiet logs."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import mmum  # noqa: F401
from _tiny_runs import ROOT, free_port, make_imagenet_folder
from transfer_data import make_ade20k, make_coco

sys.path.insert(0, osp.join(ROOT, 'tests'))
from _ddp_downstream import CASES  # noqa: E402

DDP_CASES = list(CASES) + ['gfl_swin@frozen1', 'upernet_pvt@frozen1',
                           'ft_um_mae_swin_t@frozen1',
                           'ft_green_mim_swin_b@frozen1']


# ------------------------------------------------- kind 2: DDP downstream
@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory):
    """One 2-process launch trains every case 2 iterations (imports once)."""
    out = str(tmp_path_factory.mktemp('ddp_downstream'))
    make_coco(osp.join(out, 'coco'), num_images=4, size=64,
              stuff=True)
    make_ade20k(osp.join(out, 'ade'), num_images=4, size=64)
    make_imagenet_folder(osp.join(out, 'imagenet'), num=4, size=64)
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', f'--master_port={free_port()}',
         osp.join(ROOT, 'tests', '_ddp_downstream.py'), out, *DDP_CASES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    ranks = []
    for r in (0, 1):
        path = osp.join(out, f'rank{r}.json')
        assert osp.isfile(path), proc.stdout[-4000:] + proc.stderr[-8000:]
        with open(path) as f:
            ranks.append(json.load(f))
    return ranks


@pytest.mark.slow  # one launch of 2 processes, 19 tiny trainings: ~5-10 min
@pytest.mark.parametrize('case', DDP_CASES)
def test_downstream_config_trains_under_ddp(ddp_results, case):
    """Every configs/mmdet, configs/mmseg and configs/finetune config (tiny
    model) trains 2 iterations on 2 gloo processes without
    ``find_unused_parameters``: no parameter is built that the loss never
    reaches (GFL's FPN skips stage 0), and ``frozen_stages`` freezes at
    build, before DDP records the parameters that need gradients."""
    for rank in ddp_results:
        assert rank[case] == 'ok', rank[case]


def test_gfl_backbone_outputs_only_what_fpn_reads():
    """The GFL configs output stages 1-3 (the FPN's inputs) and build no
    stage-0 norm; the FPN has the parameters it had with 4 inputs and
    ``start_level=1``."""
    from mmengine.config import Config
    for name in ('gfl_swin', 'gfl_pvt'):
        cfg = Config.fromfile(osp.join(ROOT, CASES[name]))
        assert tuple(cfg.model.backbone.out_indices) == (1, 2, 3)
        assert len(cfg.model.neck.in_channels) == 3
        assert cfg.model.neck.start_level == 0
    from mmdet.models.necks import FPN
    old = FPN([96, 192, 384, 768], 256, start_level=1,
              add_extra_convs='on_output', num_outs=5)
    new = FPN([192, 384, 768], 256, start_level=0,
              add_extra_convs='on_output', num_outs=5)
    assert {k: v.shape for k, v in old.state_dict().items()} == \
        {k: v.shape for k, v in new.state_dict().items()}


@pytest.mark.parametrize('cls', ['CPBSwinTransformer', 'PVT',
                                 'GreenSwinTransformer'])
def test_frozen_stages_freeze_at_build(cls):
    """``frozen_stages=1``: stem and stages 0-1 need no gradient right after
    the constructor (before any ``.train()``), as DDP sees them."""
    from mmum.registry import MODELS
    arch = dict(arch=dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2])) \
        if cls == 'PVT' else dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1],
                                            num_heads=[1, 1, 1, 1]))
    extra = dict(window_size=4) if cls == 'GreenSwinTransformer' else {}
    m = MODELS.build(dict(type=f'mmum.{cls}', img_size=64, frozen_stages=1,
                          out_indices=(0, 1, 2, 3), **arch, **extra))
    for name, p in m.named_parameters():
        frozen = name.startswith(('patch_embed', 'stages.0.', 'stages.1.',
                                  'norm0', 'norm1'))
        # (mmpretrain's Swin: stage i's downsample belongs to stage i)
        assert p.requires_grad != frozen, name


# ------------------------------- kind 8: BatchNorm with one image per process
@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('users_data'))
    return dict(coco=make_coco(osp.join(out, 'coco'), num_images=4, size=64,
              stuff=True),
                ade=make_ade20k(osp.join(out, 'ade'), num_images=4, size=64),
                imagenet=make_imagenet_folder(osp.join(out, 'imagenet'),
                                              num=4, size=64))


@pytest.mark.slow  # a Runner with a tiny UperNet: ~15-30 s
def test_upernet_one_image_per_process_says_batch_size(data_dirs, tmp_path):
    """UperNet (BN in the pyramid pooling) with one image per process: a
    ValueError naming the layer, ``batch_size=1`` and the fixes, not torch's
    "Expected more than 1 value per channel"; the SyncBN mmengine turns into
    BN on one process is logged."""
    from _ddp_downstream import tiny_cfg
    from transfer_data import run_cfg
    cfg = tiny_cfg('upernet_swin', data_dirs)
    cfg.train_dataloader.batch_size = 1
    cfg.model.decode_head.norm_cfg.type = 'SyncBN'
    with pytest.raises(ValueError, match=r'batch_size=1.*GroupNorm') as e:
        run_cfg(cfg, tmp_path / 'work', iters=1, test=False)
    assert 'decode_head' in str(e.value)
    log = open(next(tmp_path.glob('work/*/*.log'))).read()
    assert 'SyncBN layers of the model (decode_head.' in log
    assert 'run as BatchNorm' in log


def test_batchnorm_check_passes_two_values():
    from mmum.utils.runner_checks import one_value_per_channel_check
    bn = torch.nn.BatchNorm2d(4)
    bn.register_forward_pre_hook(one_value_per_channel_check('bn', '1'))
    bn(torch.randn(1, 4, 2, 1))  # 2 values per channel: fine
    bn.eval()
    bn(torch.randn(1, 4, 1, 1))  # eval uses running statistics
    bn.train()
    with pytest.raises(ValueError,
                       match=r'bn \(BatchNorm2d\).*\(1, 4, 1, 1\)'):
        bn(torch.randn(1, 4, 1, 1))


# ----------------------------------------- kind 12: frozen_stages meaning
@pytest.mark.parametrize('scope,backbone,warned', [
    ('mmdet', 'mmum.PVT', True),
    ('mmseg', 'mmum.CPBSwinTransformer', True),
    ('mmdet', 'mmpretrain.SwinTransformer', True),
    ('mmpretrain', 'mmum.PVT', False),     # mmpretrain's own meaning
    ('mmdet', 'mmdet.SwinTransformer', False),  # mmdet's own class
])
def test_frozen_stages_warning_for_mmdet_configs(scope, backbone, warned):
    from mmengine.registry import MODELS
    from mmum.utils.runner_checks import frozen_stages_note
    arch = dict(arch=dict(embed_dims=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], mlp_ratios=[1, 1, 1, 1])) \
        if backbone == 'mmum.PVT' else dict(embed_dims=8, depths=[1, 1, 1, 1],
                                            num_heads=[1, 1, 1, 1]) \
        if backbone == 'mmdet.SwinTransformer' else dict(arch=dict(
            embed_dims=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]))
    model = torch.nn.Module()
    import mmdet.models  # noqa: F401  registers mmdet's Swin
    model.backbone = MODELS.build(dict(type=backbone, frozen_stages=2,
                                       **arch))
    note = frozen_stages_note(dict(default_scope=scope), model)
    if warned:
        assert 'stages 0..2 (3 stages)' in note
        assert 'frozen_stages=1' in note and f"{scope}'s own" in note
    else:
        assert note is None


# --------------------------------------------- kind 6: own data, usual shapes
PRETRAIN_CFGS = sorted(
    f'configs/{d}/{f}' for d in ('um_mae', 'green_mim', 'simmim', 'vitfreeze')
    for f in os.listdir(osp.join(ROOT, 'configs', d)) if f.endswith('.py'))


def write_images(folder, names, size=80):
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    for name in names:
        path = osp.join(folder, name)
        os.makedirs(osp.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 255, (size, size, 3), np.uint8))


def build_train_dataset(cfg_path, data_root):
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    ds = dict(cfg.train_dataloader.dataset, data_root=str(data_root))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return DATASETS.build(ds)


@pytest.mark.parametrize('layout', ['flat', 'classes', 'train_flat',
                                    'train_classes', 'imagenet'])
def test_image_folder_takes_any_layout(tmp_path, layout):
    """A folder of images, flat or in (class) sub-folders, with or without
    ``train/`` and ``meta/train.txt``, is a pre-training dataset; the
    ImageNet layout lists what mmpretrain's ImageNet lists, in its order."""
    from mmengine.registry import DATASETS, DefaultScope

    from mmum.datasets import ImageFolder
    names = {'flat': ['a.jpg', 'b.PNG', 'c.jpeg'],
             'classes': ['cat/1.jpg', 'dog/2.jpg', 'dog/deep/3.png'],
             'train_flat': ['train/a.jpg', 'train/b.jpg'],
             'train_classes': ['train/x/a.jpg', 'train/y/b.jpg'],
             'imagenet': ['train/n1/a.JPEG', 'train/n2/b.JPEG']}[layout]
    write_images(tmp_path, names)
    (tmp_path / 'notes.txt').write_text('not an image')
    if layout == 'imagenet':
        os.makedirs(tmp_path / 'meta')
        (tmp_path / 'meta' / 'train.txt').write_text(
            'n2/b.JPEG 1\nn1/a.JPEG 0\n')
    ds = ImageFolder(data_root=str(tmp_path), pipeline=[])
    got = [osp.relpath(ds.get_data_info(i)['img_path'], tmp_path)
           for i in range(len(ds))]
    if layout == 'imagenet':
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            ref = DATASETS.build(dict(type='ImageNet', data_root=str(
                tmp_path), split='train', pipeline=[]))
        assert got == [osp.relpath(ref.get_data_info(i)['img_path'],
                                   tmp_path) for i in range(len(ref))]
        assert [ds.get_data_info(i)['gt_label'] for i in (0, 1)] == [1, 0]
    else:
        assert sorted(got) == sorted(names)  # only images, every one
        labels = [ds.get_data_info(i).get('gt_label') for i in range(len(ds))]
        if layout in ('classes', 'train_classes'):  # class = first folder
            classes = ds.metainfo['classes']
            level = 0 if layout == 'classes' else 1  # below train/
            assert len(classes) == 2 and labels == [
                classes.index(n.split('/')[level]) for n in got]
        else:
            assert labels == [None] * len(got)


def test_image_folder_errors_name_the_fix(tmp_path):
    from mmum.datasets import ImageFolder
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ImageFolder(data_root=str(tmp_path / 'nope'), pipeline=[])
    os.makedirs(tmp_path / 'empty' / 'train')
    with pytest.raises(ValueError, match=r"no images under .*train.*\.jpg"):
        ImageFolder(data_root=str(tmp_path / 'empty'), pipeline=[])


@pytest.mark.parametrize('cfg_path', PRETRAIN_CFGS)
def test_pretraining_configs_take_a_folder_and_skip_broken_images(
        cfg_path, tmp_path):
    """Every pre-training config reads a plain folder of photos (class
    folders, no meta/train.txt) and skips a 0-byte and a corrupt .jpg with
    a warning naming each, instead of OpenCV's bare assertion."""
    from mmengine.logging import MMLogger
    write_images(tmp_path, ['a/1.jpg', 'a/2.jpg', 'b/3.jpg'], size=300)
    (tmp_path / 'a' / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'b' / 'html.jpg').write_text('<html>404</html>')
    ds = build_train_dataset(cfg_path, tmp_path)
    assert len(ds) == 5
    logger = MMLogger.get_current_instance()
    messages = []
    handler = _ListHandler(messages)
    logger.addHandler(handler)
    try:
        for i in range(len(ds)):
            assert ds[i] is not None
    finally:
        logger.removeHandler(handler)
    text = '\n'.join(messages)
    assert 'empty.jpg' in text and 'html.jpg' in text


class _ListHandler:
    """A logging handler that keeps the messages (MMLogger does not
    propagate to pytest's caplog)."""

    def __init__(self, out):
        import logging
        self.level = logging.WARNING
        self.out = out

    def handle(self, record):
        self.out.append(record.getMessage())

    def __getattr__(self, name):  # filters, lock, ... of logging.Handler
        import logging
        return getattr(logging.NullHandler(), name)


def test_knn_and_reconstruction_hooks_skip_broken_images(tmp_path):
    """The watching hooks read data as training does: a 0-byte .jpg in the
    k-NN bank and among the pictures is left out (with a warning), not the
    end of the run at the first evaluation."""
    import shutil

    from _watch import datasets, make_shapes_dataset
    from test_knn_eval import tiny_um_mae

    from mmum.engine.hooks import KNNEvalHook
    from mmum.visualization.reconstruction import load_images
    root = make_shapes_dataset(tmp_path / 'shapes', train_per_class=3,
                               val_per_class=2)
    cls = sorted(os.listdir(osp.join(root, 'train')))[0]
    (tmp_path / 'shapes' / 'train' / cls / 'zz_empty.jpg').write_bytes(b'')
    model = tiny_um_mae()
    hook = KNNEvalHook(**datasets(root), batch_size=2, num_workers=0,
                       img_size=64)
    full = hook.evaluate(model)
    assert set(full) == {'top1', 'top5'}
    # the same numbers as without the broken file
    os.remove(tmp_path / 'shapes' / 'train' / cls / 'zz_empty.jpg')
    clean = KNNEvalHook(**datasets(root), batch_size=2, num_workers=0,
                        img_size=64).evaluate(model)
    assert full == clean
    good = osp.join(root, 'train', cls, sorted(os.listdir(
        osp.join(root, 'train', cls)))[0])
    bad = str(tmp_path / 'bad.jpg')
    open(bad, 'wb').close()
    items = load_images([bad, good], 64, 'um_mae')
    assert len(items) == 1
    with pytest.raises(ValueError, match='could be loaded'):
        load_images([bad], 64, 'um_mae')
    shutil.rmtree(tmp_path / 'shapes')


@pytest.mark.parametrize('color', ['grayscale', 'unchanged'])
def test_grayscale_loading_says_three_channels(color):
    """``LoadImageFromFile(color_type='grayscale')`` (in any pipeline):
    stopped before training, with the 3-channel fix, not the data
    preprocessor's IndexError."""
    from mmengine.config import Config

    from mmum.datasets.checks import check_image_channels
    cfg = Config.fromfile(osp.join(ROOT, 'configs/um_mae/swin_t_200e.py'))
    check_image_channels(cfg)  # the shipped config passes
    cfg.train_dataloader.dataset.pipeline[0] = dict(
        type='LoadImageFromFile', color_type=color)
    with pytest.raises(ValueError, match=r"train_dataloader\.dataset\."
                       r"pipeline\[0\].*takes 3.*color_type='color'"):
        check_image_channels(cfg)
    cfg.model.backbone.in_channels = 1  # a 1-channel model of one's own
    check_image_channels(cfg)


# ------------------------------------------- new user: a small class count
@pytest.mark.parametrize('cfg_path', sorted(
    f'configs/finetune/{f}' for f in os.listdir(
        osp.join(ROOT, 'configs', 'finetune')) if f.endswith('.py')))
def test_small_class_count_checked_before_training(cfg_path):
    """Every fine-tuning config with only ``head.num_classes=3`` stops with
    the one override for all three places; that override passes."""
    import argparse

    from mmengine.config import Config, DictAction

    from mmum.utils.runner_checks import check_class_counts
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    check_class_counts(cfg)
    cfg.model.head.num_classes = 3
    with pytest.raises(ValueError, match='num_classes=1000') as e:
        check_class_counts(cfg)
    opts = str(e.value).split('--cfg-options ')[1].split()
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg.merge_from_dict(parser.parse_args(
        ['--cfg-options', *opts]).cfg_options)
    check_class_counts(cfg)
    assert cfg.data_preprocessor.num_classes == 3


def test_class_count_check_runs_before_the_first_step(data_dirs, tmp_path):
    """Through the Runner: the check stops the run at build."""
    from _ddp_downstream import tiny_cfg
    from transfer_data import run_cfg
    cfg = tiny_cfg('ft_um_mae_swin_t', data_dirs)
    cfg.data_preprocessor.num_classes = 1000
    with pytest.raises(ValueError, match=r'data_preprocessor.num_classes=3'):
        run_cfg(cfg, tmp_path / 'work', iters=1, test=False)


# ------------------------------------ new user: a smaller encoder than shipped
TINY_ARCH = {
    'Swin': dict(arch=dict(embed_dims=32, depths=[1, 1, 1, 1],
                           num_heads=[1, 2, 2, 4])),  # last stage 256
    'PVT': dict(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], mlp_ratios=[1, 1, 1, 1])),
    'SVT': dict(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], patch_sizes=[4, 2, 2, 2],
                          strides=[4, 2, 2, 2], mlp_ratios=[1, 1, 1, 1],
                          sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])),
    'ViT': dict(arch=dict(embed_dims=96, num_layers=12, num_heads=2,
                          feedforward_channels=192)),
}


def tiny_arch(backbone_type):
    name = backbone_type.split('.')[-1]
    for key in ('PVT', 'SVT', 'Twins', 'ViT', 'Swin'):
        if key in name:
            return TINY_ARCH['SVT' if key == 'Twins' else key]
    raise KeyError(name)


@pytest.mark.parametrize('cfg_path', PRETRAIN_CFGS)
def test_smaller_encoder_decoder_width_checked(cfg_path):
    """Every pre-training config with only its encoder made smaller: the
    decoder's declared input width is checked against the encoder's last
    stage with the fix (or, LocalMIM, derived from it), not a matmul shape
    error in the first step."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope, MODELS

    from mmum.utils.runner_checks import check_decoder_width
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    cfg.model.backbone.update(tiny_arch(cfg.model.backbone.type))
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope') or 'mmum'):
        def build():
            return MODELS.build(cfg.model)
        neck = cfg.model.get('neck') or {}
        if 'embed_dim' in neck or 'in_channels' in neck:
            key = 'embed_dim' if 'embed_dim' in neck else 'in_channels'
            with pytest.raises(ValueError, match=rf'model\.neck\.{key}=') as e:
                check_decoder_width(cfg, build())
            fix = str(e.value).split('--cfg-options ')[1]
            cfg.merge_from_dict({fix.split('=')[0]: int(fix.split('=')[1])})
        check_decoder_width(cfg, build())


# -------------------------------------------------- new user: log noise
@pytest.mark.parametrize('tool', [
    'tools/train.py', 'tools/test.py',
    'tools/analysis_tools/visualize_reconstruction.py',
    'tools/analysis_tools/transfer_check.py',
    'tools/analysis_tools/benchmark_freezeout.py',
    'tools/analysis_tools/grouping_report.py',
    'tools/model_converters/extract_backbone.py',
    'tools/model_converters/green_mim_official_to_mmum.py',
    'tools/model_converters/local_mim_official_to_mmum.py',
    'tools/model_converters/um_mae_official_to_mmum.py'])
def test_tool_help_answers_before_heavy_imports(tool):
    """``--help`` parses the arguments before importing torch / mmengine /
    mmum (it answered after 16-48 s of imports before)."""
    code = ('import runpy, sys\n'
            f'sys.argv = [{tool!r}, "--help"]\n'
            'try:\n'
            f'    runpy.run_path({tool!r}, run_name="__main__")\n'
            'except SystemExit:\n'
            '    pass\n'
            'print("HEAVY", sorted(m for m in ("torch", "mmengine", "mmum")'
            ' if m in sys.modules))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                         capture_output=True, text=True, timeout=120).stdout
    assert 'usage:' in out
    assert 'HEAVY []' in out, out[-500:]


def test_console_shows_one_line_per_bulky_block(tmp_path, capsys):
    """Per-parameter optimizer options and init lines, the config and the
    environment take a line each on the console; the log file keeps all."""
    import logging

    from mmengine.logging import MMLogger
    log_file = tmp_path / 'run.log'
    logger = MMLogger.get_instance(f'quiet_{os.getpid()}',
                                   log_file=str(log_file))
    for i in range(50):
        logger.info(f'paramwise_options -- backbone.p{i}:lr=0.1')
        logger.info(f'\nbackbone.p{i} - torch.Size([4, 4]): \nInit \n ')
    logger.info('Config:\n' + 'a = 1\n' * 299 + 'a = 1')
    logger.info('\n----\nSystem environment:\n    Python: 3.11.7 (main)\n'
                '    PyTorch: 2.14.1\n\nRuntime environment:\n    seed: 0\n')
    logger.info('the first iteration')
    logger.warning('paramwise_options -- kept: a warning is never hidden')
    for h in logger.handlers:
        h.flush()
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 6, out
    assert 'config: 300 lines' in out and 'Python 3.11.7' in out
    assert 'the first iteration' in out and 'kept' in out
    text = log_file.read_text()
    assert text.count('paramwise_options -- backbone.') == 50
    assert text.count('a = 1') == 300
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            h.close()
            logger.removeHandler(h)


# ------------------------------------------- new user: transfer smoke check
def _load_transfer_check():
    from _tiny_runs import load_tool
    return load_tool('analysis_tools/transfer_check')


def _backbone_checkpoint(cfg, path):
    """A checkpoint whose ``backbone.`` entries are the (random) weights of
    ``cfg``'s backbone, as a pre-training run writes them."""
    from mmengine.registry import DefaultScope, MODELS
    bb = dict(cfg.model.backbone, init_cfg=None)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        state = MODELS.build(bb).state_dict()
    torch.save(dict(state_dict={f'backbone.{k}': v
                                for k, v in state.items()}), path)
    return str(path)


@pytest.mark.parametrize('case', ['gfl_swin', 'upernet_pvt',
                                  'mask_rcnn_twins', 'ft_um_mae_swin_t'])
def test_transfer_check_runs_a_checkpoint_in_a_downstream_config(
        case, data_dirs, tmp_path):
    """The tool loads the checkpoint's encoder into the detector /
    segmentor / classifier and runs forward and backward on tiny images;
    every trainable backbone parameter gets a gradient."""
    from _ddp_downstream import tiny_cfg
    tool = _load_transfer_check()
    cfg = tiny_cfg(case, data_dirs)
    ckpt = _backbone_checkpoint(cfg, tmp_path / 'pre.pth')
    lines = []
    report = tool.check(cfg, ckpt, size=64, log=lines.append)
    assert report['loaded'] > 0.8 * report['total'], lines
    assert report['outputs'] and report['no_grad'] == []


def test_transfer_check_finds_an_unread_stage_and_a_wrong_checkpoint(
        data_dirs, tmp_path):
    """The GFL layout before the fix (stage 0 output, FPN from level 1) is
    reported (DDP would stop on it); a checkpoint of another width fails
    with the loader's message and exit status 1."""
    from mmengine.config import Config
    from _ddp_downstream import tiny_cfg
    tool = _load_transfer_check()
    cfg = tiny_cfg('gfl_swin', data_dirs)
    ckpt = _backbone_checkpoint(cfg, tmp_path / 'pre.pth')
    cfg.model.backbone.out_indices = (0, 1, 2, 3)
    cfg.model.neck.update(in_channels=[32, 64, 128, 256], start_level=1)
    report = tool.check(cfg, ckpt, size=64, log=lambda s: None)
    assert 'norm0.weight' in report['no_grad']
    other = Config.fromfile(osp.join(ROOT, CASES['gfl_swin']))
    other.model.backbone.update(arch=dict(embed_dims=16, depths=[2, 2, 2, 2],
                                          num_heads=[1, 1, 2, 2]),
                                img_size=64, window_size=4)
    wrong = _backbone_checkpoint(other, tmp_path / 'wrong.pth')
    with pytest.raises(Exception):
        tool.check(cfg, wrong, size=64, log=lambda s: None)


@pytest.mark.slow  # builds and runs the full-size PVT-S: ~20 s
def test_transfer_check_command_line(tmp_path, capsys):
    """The command on a shipped config (PVT-S fine-tuning, full size) with
    a checkpoint of its encoder: exit status 0 and the three lines."""
    from mmengine.config import Config
    tool = _load_transfer_check()
    cfg_path = osp.join(ROOT, 'configs/finetune/um_mae_pvt_s_100e.py')
    ckpt = _backbone_checkpoint(Config.fromfile(cfg_path),
                                tmp_path / 'pvt.pth')
    assert tool.main([cfg_path, ckpt, '--size', '64']) == 0
    out = capsys.readouterr().out
    assert 'tensors equal the checkpoint' in out
    assert 'transfer check passed' in out
    bad = tmp_path / 'page.pth'
    bad.write_text('<html>not found</html>')
    assert tool.main([cfg_path, str(bad), '--size', '64']) == 1
    assert 'transfer check FAILED' in capsys.readouterr().out


# -------------------------------------------- new user: distributed failures
@pytest.mark.slow  # one 2-process launch: ~1 min
def test_first_failing_rank_error_is_printed_last(tmp_path):
    """Rank 1 fails; rank 0 then fails in gloo ("Connection closed by
    peer"). The screen ends with rank 1's error (torchrun's "Root Cause"
    block, which tools/train.py fills by recording each rank's error), not
    with rank 0's follow-up."""
    import re

    from _tiny_runs import make_imagenet_folder as folder
    data = folder(str(tmp_path / 'inet'), num=8, size=160)
    cfg = tmp_path / 'fail.py'
    cfg.write_text(
        f"_base_ = {osp.join(ROOT, 'tests/configs/rel_green_mim.py')!r}\n"
        "custom_imports = dict(imports=['mmum', '_ddp_probe', "
        "'_reliability_probe', '_fail_probe'], allow_failed_imports=False)\n"
        "custom_hooks = _base_.custom_hooks + "
        "[dict(type='FailOnRankOneHook')]\n")
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()),
               PYTHONPATH=osp.join(ROOT, 'tests'))
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(cfg), '2', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options',
         f'train_dataloader.dataset.data_root={data}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines()
              if re.search(r'\w+Error: ', line)]
    assert errors and 'rank 1 failed on purpose' in errors[-1], out[-3000:]
    tail = out[out.rindex('Root Cause'):]
    assert 'rank      : 1' in tail


FINETUNE_CFGS = sorted(
    f'configs/finetune/{f}' for f in os.listdir(
        osp.join(ROOT, 'configs', 'finetune')) if f.endswith('.py'))
# the two configs that define the pipelines; the others inherit them (slow)
OWN_PIPELINES = ('configs/finetune/um_mae_swin_t_100e.py',
                 'configs/finetune/green_mim_swin_b_100e.py')


@pytest.mark.parametrize('cfg_path', [
    p if p in OWN_PIPELINES else pytest.param(p, marks=pytest.mark.slow)
    for p in FINETUNE_CFGS])
def test_finetuning_configs_name_broken_images(cfg_path, tmp_path):
    """Fine-tuning on one's own class folders: an unreadable image is
    skipped in training (warning) and named in validation (OSError)."""
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope
    cfg = Config.fromfile(osp.join(ROOT, cfg_path))
    write_images(tmp_path, ['a/1.jpg', 'b/2.jpg'], size=300)
    (tmp_path / 'a' / 'empty.jpg').write_bytes(b'')
    built = {}
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for split in ('train', 'val'):
            ds = dict(cfg[f'{split}_dataloader'].dataset,
                      type='CustomDataset', data_root=str(tmp_path))
            ds.pop('split', None)
            built[split] = DATASETS.build(ds)
    empty = [i for i in range(3) if built['val'].get_data_info(i)[
        'img_path'].endswith('empty.jpg')][0]
    assert built['train'][empty] is not None  # another image instead
    with pytest.raises(OSError, match='empty.jpg'):
        built['val'][empty]
