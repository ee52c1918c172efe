"""What users hit with checkpoints (issue 26, kinds 1, 4, 5, 7, 9, 11 and
the checkpoint size): released layouts in every importer, files that are not
checkpoints wherever one is read, one setting changed in one place of a
pre-training config, weights-only files vs resuming, learning-rate scaling
with gradient accumulation, v1-layout Swin checkpoints."""
import copy
import math
import glob
import os
import os.path as osp
import sys
import uuid
import zipfile
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner

import mmum  # noqa: F401
from mmum.engine.runner_fixes import scale_lr

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _tiny_runs import (ROOT, TINY_CFG, drop_new_default_scopes,  # noqa
                        load_tool, make_image_folder)

CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if f'{osp.sep}_base_{osp.sep}' not in p)


def _tool(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'ckpt_' + osp.basename(path)[:-3], osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------- 4. files that are not checkpoints
def _html(path):
    path.write_text('<!DOCTYPE html>\n<html><head><title>Sign in'
                    '</title></head><body>...</body></html>\n')


def _random(path):
    torch.manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (4000, ),
                                         dtype=torch.uint8).tolist()))


def _empty(path):
    path.write_bytes(b'')


def _zip(path):
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('weights/readme.txt', 'not torch')


def _lfs(path):
    path.write_text('version https://git-lfs.github.com/spec/v1\n'
                    'oid sha256:4d7a\nsize 113\n')


def _safetensors(path):
    head = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(len(head).to_bytes(8, 'little') + head + b'\0' * 4)


NOT_CHECKPOINTS = {
    'html': (_html, r"starts with '<!DOCTYPE html>'.*failed download"),
    'random bytes': (_random, r'starts with the bytes .*no torch.save'),
    'empty': (_empty, r'empty \(0 bytes\)'),
    'zip of other files': (_zip, r'zip archive, but not one torch.save.*'
                           r'readme.txt'),
    'git lfs pointer': (_lfs, r'Git LFS pointer.*git lfs pull'),
    'safetensors': (_safetensors, r'safetensors file'),
}


def _tiny_cfg(work_dir, data, **options):
    cfg = Config.fromfile(TINY_CFG)
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.dataset.data_root = data
    cfg.test_dataloader.dataset.data_root = data
    cfg.experiment_name = f't{uuid.uuid4().hex[:8]}'
    cfg.merge_from_dict(options)
    return cfg


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    return make_image_folder(str(tmp_path_factory.mktemp('images')))


@pytest.fixture
def runner_from(images, tmp_path):
    from mmengine.registry import DefaultScope
    before = set(DefaultScope._instance_dict)
    made = []

    def make(work_dir=None, **options):
        cfg = _tiny_cfg(work_dir or tmp_path / 'work', images, **options)
        runner = Runner.from_cfg(cfg)
        made.append(runner)
        return runner

    yield make
    drop_new_default_scopes(before)


def _loaders(tmp_path, images):
    """Every place that reads a checkpoint: name -> callable(path)."""
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmum.engine.checkpoint import check_resume_checkpoint
    from mmum.registry import MODELS

    def init_cfg(path):
        MODELS.build(dict(type='mmum.PVT', arch=dict(
            embed_dims=[8, 8, 16, 16], depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]), img_size=32,
            init_cfg=dict(type='Pretrained', checkpoint=path))).init_weights()

    def tool(name, *extra):
        def run(path):
            module = _tool(name)
            argv = sys.argv
            sys.argv = ['x', path, str(tmp_path / 'out.pth'), *extra]
            try:
                module.main()
            finally:
                sys.argv = argv
        return run

    def train(resume):
        def run(path):
            from mmengine.registry import DefaultScope
            before = set(DefaultScope._instance_dict)
            try:
                cfg = _tiny_cfg(tmp_path / 'work', images, load_from=path,
                                resume=resume)
                Runner.from_cfg(cfg).load_or_resume()
            finally:
                drop_new_default_scopes(before)
        return run

    def train_py_resume(path):
        cfg = Config(dict(resume=True, load_from=path,
                          work_dir=str(tmp_path / 'work')))
        check_resume_checkpoint(cfg)

    return {
        '_load_checkpoint': lambda p: _load_checkpoint(p, 'cpu'),
        'load_from': train(False),
        'load_from + resume': train(True),
        'tools/train.py --resume': train_py_resume,
        'init_cfg Pretrained': init_cfg,
        'extract_backbone.py': tool(
            'tools/model_converters/extract_backbone.py'),
        'um_mae importer': tool(
            'tools/model_converters/um_mae_official_to_mmum.py'),
        'green_mim importer': tool(
            'tools/model_converters/green_mim_official_to_mmum.py'),
        'green_mim importer --backbone-only': tool(
            'tools/model_converters/green_mim_official_to_mmum.py',
            '--backbone-only'),
        'local_mim importer': tool(
            'tools/model_converters/local_mim_official_to_mmum.py'),
    }


LOADERS = ['_load_checkpoint', 'load_from', 'load_from + resume',
           'tools/train.py --resume', 'init_cfg Pretrained',
           'extract_backbone.py', 'um_mae importer', 'green_mim importer',
           'green_mim importer --backbone-only', 'local_mim importer']


@pytest.mark.parametrize('loader', LOADERS)
@pytest.mark.parametrize('kind', list(NOT_CHECKPOINTS))
def test_not_a_checkpoint_named_everywhere(kind, loader, tmp_path, images):
    write, what = NOT_CHECKPOINTS[kind]
    path = tmp_path / 'model.pth'
    write(path)
    with pytest.raises((RuntimeError, ValueError)) as info:
        _loaders(tmp_path, images)[loader](str(path))
    msg = str(info.value)
    assert 'model.pth' in msg, msg
    assert 'weights_only' not in msg and 'Weights only' not in msg, msg
    import re
    assert re.search(what, msg, re.S), msg


def test_real_checkpoints_are_not_flagged(tmp_path):
    from mmum.engine.checkpoint import checkpoint_problem, not_a_checkpoint
    for zip_format in (True, False):
        path = str(tmp_path / f'{zip_format}.pth')
        torch.save({'state_dict': {'w': torch.ones(3)}}, path,
                   _use_new_zipfile_serialization=zip_format)
        assert not_a_checkpoint(path) is None
        assert checkpoint_problem(path) is None


# ---------------------------------------- 7. weights vs continuing a run
def _weights_only(runner, path, keep=(), extra=None):
    sd = {k: v.clone() + 1 for k, v in runner.model.state_dict().items()
          if k.startswith(keep) or not keep}
    sd.update(extra or {})
    torch.save({'state_dict': sd, 'meta': dict(converted_from='test')}, path)
    return sd


def _logs(root) -> str:
    """The text of every Runner log file under ``root``."""
    return '\n'.join(open(p).read() for p in sorted(
        glob.glob(osp.join(str(root), '**', '*.log'), recursive=True)))


def _same(model, sd):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in sd.items())


def test_weights_only_with_resume_loads_and_starts_fresh(
        runner_from, tmp_path):
    probe = runner_from()
    path = str(tmp_path / 'imported.pth')
    sd = _weights_only(probe, path)
    runner = runner_from(load_from=path, resume=True)
    runner.train()  # mmengine alone: KeyError: 'epoch'
    assert runner.iter == 4
    log = _logs(tmp_path)
    assert 'holds model weights only' in log
    assert 'starting a fresh schedule at epoch 0, iteration 0' in log
    # the weights were those of the file before training moved them
    fresh = runner_from(work_dir=tmp_path / 'again', load_from=path,
                        resume=True)
    fresh.load_or_resume()
    assert _same(fresh.model, sd)
    assert fresh._resume is True


def test_weights_only_with_resume_continues_a_run_of_the_work_dir(
        runner_from, tmp_path):
    probe = runner_from()
    path = str(tmp_path / 'imported.pth')
    _weights_only(probe, path)
    first = runner_from(load_from=path, resume=True)
    first.train()
    # the same command again (a restart): resumes the run, not the weights
    again = runner_from(load_from=path, resume=True,
                        train_cfg=dict(max_iters=6))
    again.train()
    assert again.iter == 6
    log = _logs(tmp_path)
    assert 'resuming it' in log and 'iter_4.pth' in log


def test_encoder_only_weights_name_what_keeps_its_init(
        runner_from, tmp_path):
    probe = runner_from()
    path = str(tmp_path / 'encoder.pth')
    sd = _weights_only(probe, path, keep=('backbone.', ))
    runner = runner_from(load_from=path, resume=True)
    runner.load_or_resume()
    assert _same(runner.model, sd)
    log = _logs(tmp_path)
    assert 'keep their initialisation: head' in log, log


def test_weights_of_another_architecture_refused_when_resuming(
        runner_from, tmp_path):
    probe = runner_from()
    path = str(tmp_path / 'other.pth')
    _weights_only(probe, path, extra={'neck.decoder.weight': torch.ones(2)})
    runner = runner_from(load_from=path, resume=True)
    with pytest.raises(ValueError, match=r'other.pth.*does not fit.*'
                       r'neck.decoder.weight'):
        runner.load_or_resume()


@pytest.mark.parametrize('resume', [False, True])
def test_load_from_sharing_no_name_is_refused(runner_from, tmp_path, resume):
    path = str(tmp_path / 'released.pth')
    torch.save({'model': {'blocks.0.attn.qkv.weight': torch.ones(3, 1)}},
               path)
    runner = runner_from(load_from=path, resume=resume)
    with pytest.raises(ValueError, match=r"released.pth.*shares no weight.*"
                       r"model \(1\).*_official_to_mmum"):
        runner.load_or_resume()


def test_run_checkpoint_as_load_from_says_the_schedule_starts_anew(
        runner_from, tmp_path):
    first = runner_from(work_dir=tmp_path / 'run')
    first.train()
    path = str(tmp_path / 'run' / 'iter_4.pth')
    runner = runner_from(load_from=path, resume=False)
    runner.load_or_resume()
    log = _logs(tmp_path)
    assert 'is the checkpoint of a run (epoch 0, iteration 4)' in log
    assert '--resume' in log
    assert _same(runner.model,
                 torch.load(path, map_location='cpu')['state_dict'])


def test_resume_without_optimizer_state_warns(runner_from, tmp_path):
    first = runner_from(work_dir=tmp_path / 'run', default_hooks=dict(
        checkpoint=dict(save_optimizer=False)))
    first.train()
    path = str(tmp_path / 'run' / 'iter_4.pth')
    assert 'optimizer' not in torch.load(path, map_location='cpu')
    runner = runner_from(load_from=path, resume=True,
                         train_cfg=dict(max_iters=5))
    runner.train()
    assert runner.iter == 5
    assert 'without the optimizer state' in _logs(tmp_path)


# -------------------------------------------------------- 9. lr scaling
def _scaled_lr(world_size, batch_size, accum, base, enable=True):
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=1.0),
                           accumulative_counts=accum)
    runner = SimpleNamespace(
        world_size=world_size, param_schedulers=[dict(type='LinearLR')],
        _train_dataloader=dict(batch_size=batch_size),
        logger=MMLogger.get_current_instance())
    scale_lr(runner, wrapper, dict(enable=enable, base_batch_size=base))
    return wrapper.optimizer.param_groups[0]['lr']


@pytest.mark.parametrize('accum', [1, 2, 4, 8])
def test_auto_scale_lr_counts_accumulation(accum):
    # base 4096 = 8 x 128 x 4: the UM-MAE setting, whatever the split
    assert _scaled_lr(8, 128, accum, 4096) == pytest.approx(accum / 4)
    assert _scaled_lr(8, 512 // accum, accum, 4096) == pytest.approx(1.0)
    assert _scaled_lr(2, 128, accum, 4096, enable=False) == 1.0


def test_runner_scales_with_accumulation(runner_from):
    # tiny config: batch 2, one process
    for accum, want in ((1, 0.25), (4, 1.0)):
        runner = runner_from(
            auto_scale_lr=dict(enable=True, base_batch_size=8),
            optim_wrapper=dict(accumulative_counts=accum))
        runner.optim_wrapper = runner.build_optim_wrapper(
            runner.optim_wrapper)
        runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
        lr = runner.optim_wrapper.optimizer.param_groups[0]['lr']
        assert lr == pytest.approx(1e-3 * want), accum


@pytest.mark.parametrize('path', CONFIGS)
def test_every_config_lr_is_unscaled_on_its_documented_setup(path):
    """Each config's ``base_batch_size`` is its batch on 8 processes with
    its accumulation: scaling there leaves the lr as written, and with 1
    process scales it by 1/8."""
    cfg = Config.fromfile(osp.join(ROOT, path))
    if 'auto_scale_lr' not in cfg:  # mmseg: fixed batch, no scaling
        assert path.startswith('configs/mmseg/'), path
        return
    bs = cfg.train_dataloader.batch_size
    accum = cfg.optim_wrapper.get('accumulative_counts', 1)
    base = cfg.auto_scale_lr.base_batch_size
    assert _scaled_lr(8, bs, accum, base) == pytest.approx(1.0), path
    assert _scaled_lr(1, bs, accum, base) == pytest.approx(1 / 8), path


# --------------------------- 1. released checkpoints in every published layout
DECODER_NAMES = ('decoder_', 'mask_token')


def _encoder_only(sd, keep_vis_token=True):
    return {k: v for k, v in sd.items()
            if not k.startswith(DECODER_NAMES)
            and (keep_vis_token or k != 'vis_mask_token')}


def _run_cli(module, argv, capsys):
    old = sys.argv
    sys.argv = ['x', *argv]
    try:
        module.main()
    finally:
        sys.argv = old
    return capsys.readouterr().out


@pytest.fixture(scope='module')
def converters():
    import test_converters
    return test_converters


@pytest.mark.parametrize('arch', ['swin', 'pvt'])
@pytest.mark.parametrize('vis_token', [True, False])
def test_um_mae_encoder_only_release_converts(arch, vis_token, converters):
    """The encoder-only release converts to exactly the backbone part of a
    full checkpoint's conversion."""
    official = converters.official
    full = (converters.official_swin_state() if arch == 'swin' else
            converters.official_pvt_state())
    ref, _ = official.official_to_mmum(full)
    out, got_arch = official.official_to_mmum(
        _encoder_only(full, vis_token))
    assert got_arch == arch
    want = {k: v for k, v in ref.items() if k.startswith('backbone.')
            and (vis_token or k != 'backbone.mask_token')}
    assert list(out) == list(want)
    for k, v in want.items():
        assert torch.equal(out[k], v), k
    # loads with the strict Pretrained init into the fine-tuning backbone
    from mmum.registry import MODELS
    cfg = converters.um_mae_cfg(arch)
    model = MODELS.build(cfg)
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected
    assert all(k.startswith('neck.') or k == 'backbone.mask_token'
               for k in missing)


def test_um_mae_cli_on_the_encoder_only_release(tmp_path, capsys,
                                                converters):
    """Full-size Swin-T as released without decoder: writes the encoder,
    says the decoder is missing and how to load the file."""
    state = converters.RELEASED['mae_swin_tiny_256'][1]()
    src, dst = tmp_path / 'mae_swin_tiny_256.pth', tmp_path / 'um.pth'
    torch.save({'model': _encoder_only(state)}, src)
    out = _run_cli(converters.official, [str(src), str(dst)], capsys)
    assert 'no decoder in this checkpoint' in out
    assert "prefix='backbone.'" in out and 'um_mae_swin_t_100e.py' in out
    assert 'resume=True' in out and 'fresh' in out  # load_from advice
    sd = torch.load(dst)['state_dict']
    assert sd and all(k.startswith('backbone.') for k in sd)
    # the full release still converts and names its config
    torch.save({'model': state}, src)
    out = _run_cli(converters.official, [str(src), str(dst)], capsys)
    assert 'no decoder' not in out and 'swin_t_200e.py' in out
    assert any(k.startswith('neck.') for k in torch.load(dst)['state_dict'])


@pytest.fixture(scope='module')
def green():
    import test_green_mim_fidelity
    return test_green_mim_fidelity


@pytest.mark.parametrize('prefix', ['encoder.', ''])
def test_green_mim_encoder_only_converts_without_backbone_only(
        prefix, green, tmp_path, capsys):
    full = green.released_state_dict()
    ref, _ = green.conv.official_to_mmum(full)
    enc = {prefix + k[len('encoder.'):]: v for k, v in full.items()
           if k.startswith('encoder.')}
    out, settings = green.conv.official_to_mmum(enc)
    want = {k: v for k, v in ref.items() if k.startswith('backbone.')}
    assert list(out) == list(want)
    assert all(torch.equal(out[k], v) for k, v in want.items())
    assert 'neck' not in settings
    src, dst = tmp_path / 'released.pth', tmp_path / 'green.pth'
    torch.save({'model': enc}, src)
    printed = _run_cli(green.conv, [str(src), str(dst)], capsys)
    assert 'no decoder in this checkpoint' in printed
    assert '--backbone-only' in printed and 'resume=True' in printed
    printed = _run_cli(green.conv, [str(src), str(dst), '--backbone-only'],
                       capsys)
    assert 'init_cfg' in printed


def test_green_mim_full_cli_advice_covers_resume(green, tmp_path, capsys):
    src, dst = tmp_path / 'released.pth', tmp_path / 'green.pth'
    torch.save({'model': green.released_state_dict()}, src)
    printed = _run_cli(green.conv, [str(src), str(dst)], capsys)
    assert "load_from='" in printed and 'resume=True' in printed
    assert 'no decoder' not in printed


@pytest.fixture(scope='module')
def local_mim():
    import test_local_mim_official
    return test_local_mim_official


@pytest.mark.parametrize('layout', ['encoder', 'fine-tuned'])
def test_local_mim_encoder_only_converts(layout, local_mim, tmp_path,
                                         capsys):
    full = local_mim.released_state_dict()
    ref, _ = local_mim.tool.official_to_mmum(full)
    enc = {k: v for k, v in full.items()
           if k.split('.')[0] in ('cls_token', 'pos_embed', 'patch_embed',
                                  'blocks')}
    if layout == 'fine-tuned':
        enc.update({'fc_norm.weight': torch.ones(32),
                    'fc_norm.bias': torch.zeros(32),
                    'head.weight': torch.zeros(1000, 32),
                    'head.bias': torch.zeros(1000)})
    out, info = local_mim.tool.official_to_mmum(enc)
    want = {k: v for k, v in ref.items() if k.startswith('backbone.')}
    assert list(out) == list(want)
    assert all(torch.equal(out[k], v) for k, v in want.items())
    assert info['decoder_dims'] is None
    model = local_mim.tiny_model()
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected and all(k.startswith('neck.') for k in missing)
    src, dst = tmp_path / 'released.pth', tmp_path / 'lm.pth'
    torch.save({'model': enc}, src)
    printed = _run_cli(local_mim.tool, [str(src), str(dst)], capsys)
    assert 'no decoders in this checkpoint' in printed
    assert ("['fc_norm', 'head'] not written" in printed) == (
        layout == 'fine-tuned')
    assert "prefix='backbone.'" in printed and 'resume=True' in printed


# ------------------------------------------ 11. old-layout Swin checkpoints
SWIN_TINY = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
SWIN_CLASSES = {  # name -> (config, family)
    'mmpretrain.SwinTransformer': 'table',
    'mmum.GreenSwinTransformer': 'table',
    'mmum.CPBSwinTransformer': 'mlp',
    'mmum.UMSwinTransformer': 'mlp',
    'mmum.SimMIMCPBSwinTransformer': 'mlp',
    'mmum.LocalMIMSwin': 'mlp',
}


def _swin_cfg(name, **kw):
    window = (dict(stage_cfgs=dict(block_cfgs=dict(window_size=4)))
              if 'SimMIM' in name else dict(window_size=4))
    return dict(type=name, arch=SWIN_TINY, img_size=64, **window, **kw)


def _swin(name, seed=0):
    from mmum.registry import MODELS
    torch.manual_seed(seed)
    return MODELS.build(_swin_cfg(name))


def old_layout(state_dict, version):
    """A current Swin state dict in the layout of mmcls 0.x (version 1:
    final norm ``norm.*``, ``attn_mask`` buffers of the shifted blocks;
    version 2: ``norm3`` and the buffers)."""
    from collections import OrderedDict
    out = OrderedDict()
    for k, v in state_dict.items():
        if version == 1 and k.startswith('norm3.'):
            k = 'norm.' + k[len('norm3.'):]
        out[k] = v
    for s in range(4):
        out[f'stages.{s}.blocks.1.attn.attn_mask'] = torch.zeros(4, 16, 16)
    out._metadata = OrderedDict({'': dict(version=version)})
    return out


@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('name', list(SWIN_CLASSES))
def test_old_swin_checkpoint_loads_into_every_swin(name, version, tmp_path):
    source = _swin(name, seed=0)
    want = source.state_dict()
    old = old_layout(want, version)
    model = _swin(name, seed=1)
    model.load_state_dict(old, strict=True)  # converted, nothing left out
    for k, v in want.items():
        assert torch.equal(model.state_dict()[k], v), (name, k)
    # through the (strict) Pretrained init of a fine-tuning backbone: a
    # whole-model file and a backbone-only file
    from mmum.registry import MODELS
    for prefix in ('backbone.', None):
        path = str(tmp_path / 'old.pth')
        torch.save({'state_dict': {(prefix or '') + k: v
                                   for k, v in old.items()}}, path)
        torch.manual_seed(2)
        init = MODELS.build(_swin_cfg(name, init_cfg=dict(
            type='Pretrained', _scope_='mmum', checkpoint=path,
            prefix=prefix)))
        init.init_weights()
        for k in ('norm3.weight', 'stages.3.blocks.1.norm2.bias'):
            assert torch.equal(init.state_dict()[k], want[k]), (name, k)


@pytest.mark.parametrize('name', [n for n, f in SWIN_CLASSES.items()
                                  if f == 'mlp'])
def test_old_table_swin_into_a_cpb_swin_names_the_way(name):
    table = old_layout(_swin('mmpretrain.SwinTransformer').state_dict(), 1)
    with pytest.raises(ValueError, match=r'relative-position bias tables.*'
                       r'no key conversion.*mmpretrain.SwinTransformer'):
        _swin(name).load_state_dict(table)


# --------------------------- 5. one setting changed in one place of a config
SW5 = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
PV5 = dict(embed_dims=[32, 32, 64, 64], depths=[1, 1, 1, 1],
           num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
VT5 = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
TW5 = dict(embed_dims=[8, 16, 32, 64], depths=[2, 2, 2, 2],
           num_heads=[1, 1, 2, 2], patch_sizes=[4, 2, 2, 2],
           strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
           sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])
MAE_DEC = dict(decoder_embed_dim=64, decoder_num_heads=4, decoder_depth=1)
LOCAL_VIT = dict(backbone=dict(arch=dict(VT5, num_layers=4),
                               out_indices=(0, 1, 2, 3)),
                 neck=dict(embed_dims=32, num_heads=2))
PRETRAIN_TINY = {  # every pre-training config -> its tiny model overrides
    'configs/um_mae/swin_t_200e.py': dict(
        backbone=dict(arch=SW5), neck=dict(embed_dim=256, **MAE_DEC)),
    'configs/um_mae/swin_l_800e.py': dict(
        backbone=dict(arch=SW5), neck=dict(embed_dim=256, **MAE_DEC)),
    'configs/um_mae/pvt_s_200e.py': dict(
        backbone=dict(arch=PV5), neck=dict(embed_dim=64, **MAE_DEC)),
    'configs/um_mae/vit_b_200e.py': dict(
        backbone=dict(arch=VT5), neck=dict(embed_dim=32, **MAE_DEC)),
    'configs/green_mim/swin_b_800e.py': dict(
        backbone=dict(arch=SW5), neck=dict(embed_dim=256, **MAE_DEC)),
    'configs/green_mim/swin_l_800e.py': dict(
        backbone=dict(arch=SW5, window_size=7),
        neck=dict(embed_dim=256, **MAE_DEC)),
    'configs/green_mim/twins_l_800e.py': dict(
        backbone=dict(arch=TW5), neck=dict(embed_dim=64, **MAE_DEC)),
    'configs/simmim/swin_t_256_200e.py': dict(
        backbone=dict(arch=SW5), neck=dict(in_channels=256)),
    'configs/simmim/pvt_s_256_200e.py': dict(
        backbone=dict(arch=PV5), neck=dict(in_channels=64)),
    'configs/simmim/twins_l_224_800e.py': dict(
        backbone=dict(arch=TW5), neck=dict(in_channels=64)),
    'configs/vitfreeze/local_mim_vit_b_100e.py': LOCAL_VIT,
    'configs/vitfreeze/vit_b_100e.py': LOCAL_VIT,
    'configs/vitfreeze/swin_t_100e.py': dict(
        backbone=dict(arch=SW5), neck=dict(embed_dims=32, num_heads=2)),
}
GEOMETRY_KEYS = ('patch_size', 'img_size', 'mask_unit', 'num_patches',
                 'input_size', 'mask_patch_size', 'model_patch_size',
                 'encoder_stride', 'scale')


def test_every_pretraining_config_is_covered():
    pretrain = {p for p in CONFIGS if p.split('/')[1] in (
        'um_mae', 'green_mim', 'simmim', 'vitfreeze')}
    assert pretrain == set(PRETRAIN_TINY)


_PARSED = {}


def _tiny_pretrain(path):
    if path not in _PARSED:  # parsing a config costs about a second
        cfg = Config.fromfile(osp.join(ROOT, path))
        for part, values in PRETRAIN_TINY[path].items():
            cfg.model[part].update(copy.deepcopy(values))
        _PARSED[path] = cfg
    return copy.deepcopy(_PARSED[path])


def geometry_places(cfg):
    """(where, value) of every patch size, image size and mask unit the
    config states: the algorithm, backbone, neck, head, and the train
    pipeline's transforms (crop, mask generator)."""
    from mmum.models.selfsup.geometry import train_pipeline
    out = [(('model', k), cfg.model[k]) for k in GEOMETRY_KEYS
           if k in cfg.model]
    for part in ('backbone', 'neck', 'head'):
        out += [(('model', part, k), cfg.model[part][k])
                for k in GEOMETRY_KEYS if k in (cfg.model.get(part) or {})]
    for i, t in enumerate(train_pipeline(cfg)):
        out += [(('pipeline', i, k), t[k]) for k in GEOMETRY_KEYS if k in t]
    return out


def _changed(key, value):
    """Another plausible value of a setting."""
    if key == 'num_patches':
        return (math.isqrt(value) * 2)**2
    if key in ('img_size', 'scale', 'input_size'):
        return value + 32
    return value * 2


def _set(cfg, where, value):
    from mmum.models.selfsup.geometry import train_pipeline
    if where[0] == 'model':
        node = cfg.model
        for w in where[1:-1]:
            node = node[w]
        node[where[-1]] = value
    else:
        train_pipeline(cfg)[where[1]][where[2]] = value


def _first_batch(cfg):
    """Build the model as the Runner does (checks included) and compute the
    loss of one batch made by the config's train pipeline."""
    import numpy as np
    from mmengine.dataset import Compose, default_collate
    from mmengine.registry import DefaultScope

    from mmum.models.selfsup.geometry import attach, train_pipeline
    from mmum.registry import MODELS
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope', 'mmum')):
        model_cfg = copy.deepcopy(cfg.model)
        if cfg.get('data_preprocessor') is not None:
            model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
        model = attach(MODELS.build(model_cfg), cfg)
        pipeline = Compose(train_pipeline(cfg)[1:])  # after loading
        rng = np.random.RandomState(0)
        items = [pipeline(dict(
            img=rng.randint(0, 255, (300, 280, 3)).astype(np.uint8),
            img_shape=(300, 280), ori_shape=(300, 280)))]
        data = model.data_preprocessor(default_collate(items), True)
        losses = model(**data, mode='loss')
    return sum(v for k, v in losses.items() if 'loss' in k)


@pytest.mark.parametrize('path', sorted(PRETRAIN_TINY))
def test_one_setting_changed_in_one_place(path):
    """Each patch size / image size / mask unit of each pre-training config,
    changed alone: the model trains (the others adapt) or a ValueError of
    mmum's says which settings disagree -- never a deep torch error."""
    import traceback
    torch.manual_seed(0)
    assert torch.isfinite(_first_batch(_tiny_pretrain(path)))
    cases = [(where, _changed(where[-1], value))
             for where, value in geometry_places(_tiny_pretrain(path))
             if isinstance(value, int)]
    if path == 'configs/um_mae/vit_b_200e.py':  # the reported case
        cases.append((('model', 'backbone', 'patch_size'), 8))
    assert len(cases) >= 2, cases
    bad = []
    for where, value in cases:
        cfg = _tiny_pretrain(path)
        _set(cfg, where, value)
        try:
            torch.manual_seed(0)
            loss = _first_batch(cfg)
            assert torch.isfinite(loss), (where, value)
        except ValueError as e:
            origin = traceback.extract_tb(e.__traceback__)[-1].filename
            if f'{osp.sep}mmum{osp.sep}' not in origin:
                bad.append((where, value, f'ValueError from {origin}'))
        except Exception as e:  # noqa: BLE001  deep errors are the bug
            bad.append((where, value, f'{type(e).__name__}: {e}'[:300]))
    assert not bad, bad


def test_reported_case_names_every_place():
    cfg = _tiny_pretrain('configs/um_mae/vit_b_200e.py')
    cfg.model.backbone.patch_size = 8
    with pytest.raises(ValueError) as info:
        _first_batch(cfg)
    msg = str(info.value)
    for words in ('model.neck.patch_size is 16', 'model.head.patch_size is '
                  '16', 'model.backbone.patch_size is 8',
                  'model.neck.num_patches is 196', '28x28'):
        assert words in msg, (words, msg)


def test_runner_checks_the_config_at_build(runner_from, tmp_path):
    """Through mmengine's Runner (what tools/train.py runs): at build."""
    cfg = _tiny_pretrain('configs/simmim/swin_t_256_200e.py')
    from mmum.models.selfsup.geometry import train_pipeline
    train_pipeline(cfg)[3]['model_patch_size'] = 8
    cfg.work_dir = str(tmp_path / 'work')
    cfg.launcher = 'none'
    with pytest.raises(ValueError, match=r'at build.*model_patch_size is 8, '
                       r'but model.backbone.patch_size is 4'):
        Runner.from_cfg(cfg)


# ------------------------------------------------------- checkpoint size
def test_lighter_checkpoints_keep_resume(runner_from, tmp_path):
    """The documented lighter options with mmum's checkpoint hook:
    max_keep_ckpts=1 keeps one resumable checkpoint, published_keys writes
    a weights-only copy that loads as load_from with resume=True."""
    work = tmp_path / 'run'
    runner = runner_from(work_dir=work, default_hooks=dict(checkpoint=dict(
        type='mmum.SafeCheckpointHook', by_epoch=False, interval=2,
        max_keep_ckpts=1, published_keys=['meta', 'state_dict'])))
    runner.train()
    assert sorted(p.name for p in work.glob('iter_*.pth')) == sorted([
        'iter_4.pth', next(p.name for p in work.glob('iter_4-*.pth'))])
    full = torch.load(work / 'iter_4.pth', map_location='cpu')
    light = next(work.glob('iter_4-*.pth'))
    assert 'optimizer' in full
    assert set(torch.load(light, map_location='cpu')) == {'meta',
                                                          'state_dict'}
    assert light.stat().st_size < (work / 'iter_4.pth').stat().st_size / 2
    resumed = runner_from(work_dir=work, resume=True,
                          train_cfg=dict(max_iters=5))
    resumed.train()
    assert resumed.iter == 5
    fresh = runner_from(work_dir=tmp_path / 'fresh', load_from=str(light),
                        resume=True)
    fresh.load_or_resume()
    assert _same(fresh.model, torch.load(light)['state_dict'])


def test_imported_encoder_only_release_into_the_pretraining_config(
        tmp_path, converters):
    """The reported path: an encoder-only UM-MAE release, imported, as
    load_from of the unchanged pre-training config (resume=True): trains
    from the imported encoder with a fresh decoder and a fresh schedule."""
    import cv2
    import numpy as np
    from mmengine.registry import DefaultScope
    state = _encoder_only(converters.official_swin_state())
    dst = tmp_path / 'imported.pth'
    out, _ = converters.official.official_to_mmum(state)
    torch.save({'state_dict': out, 'meta': {}}, dst)
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        cv2.imwrite(str(images / f'{i}.png'),
                    rng.randint(0, 255, (300, 280, 3)).astype(np.uint8))
    cfg = _tiny_pretrain('configs/um_mae/swin_t_200e.py')
    assert cfg.resume is True
    cfg.merge_from_dict(dict(
        work_dir=str(tmp_path / 'work'), load_from=str(dst),
        experiment_name=f't{uuid.uuid4().hex[:8]}',
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=1,
                       _delete_=True),
        default_hooks=dict(checkpoint=dict(by_epoch=False, interval=1)),
        optim_wrapper=dict(accumulative_counts=1)))
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0,
                                by_epoch=False)]
    cfg.train_dataloader.update(batch_size=2, num_workers=0,
                                persistent_workers=False)
    cfg.train_dataloader.dataset = dict(
        type='CustomDataset', data_root=str(images), with_label=False,
        pipeline=cfg.train_dataloader.dataset.pipeline)
    from mmum.utils.dist import cpu_fallback_amp
    cpu_fallback_amp(cfg)  # AMP needs a GPU
    before = set(DefaultScope._instance_dict)
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    finally:
        drop_new_default_scopes(before)
    assert runner.iter == 1
    log = _logs(tmp_path / 'work')
    assert 'holds model weights only' in log
    assert 'keep their initialisation: neck' in log
