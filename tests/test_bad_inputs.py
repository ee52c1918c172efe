"""Bad input -> a clear error: one table, each case with the error type and
the words its message must contain (the bad value and what is valid).

Behaviour beyond the message (skip-and-log of broken images, the NaN guard
keeping the last good checkpoint) is tested below the table.
"""
import logging
import os
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from torch import nn

import mmum  # noqa: F401
from mmum.datasets.checks import check_train_data
from mmum.datasets.transforms import SafeLoadImageFromFile, UniformMasking
from mmum.engine.hooks import (DecoderPruningHook, NaNGuardHook,
                               SafeCheckpointHook)
from mmum.engine.schedulers.freezeout import FreezeOutLR


pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------- helpers
def um_mae(window_size):
    from test_um_mae import build
    return build(window_size=window_size)


def um_batch():
    from test_um_mae import batch
    return batch(n=1)


def green_mim(**kw):
    from test_green_mim import _tiny_model
    return _tiny_model(**kw)


def freezeout(t_0=0.5, spacing='linear', with_layers=True):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    groups = [dict(params=[p], layer_id=i) if with_layers else dict(params=[p])
              for i, p in enumerate(model.parameters())]
    optim = OptimWrapper(torch.optim.SGD(groups, lr=0.1))
    return FreezeOutLR(optim, t_0=t_0, spacing=spacing, end=10,
                       by_epoch=False)


def write(path, data: bytes):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def load_image(path, on_error='raise'):
    return SafeLoadImageFromFile(on_error=on_error).transform(
        dict(img_path=path))


def load_checkpoint(path):
    from mmengine.runner.checkpoint import _load_checkpoint
    return _load_checkpoint(path, map_location='cpu')


def truncated_checkpoint(tmp):
    path = osp.join(tmp, 'iter_4.pth')
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
    data = open(path, 'rb').read()
    write(path, data[:len(data) // 2])
    return load_checkpoint(path)


def resume_other_arch(tmp):
    """SafeCheckpointHook, resuming a tiny UM-MAE from a Linear's
    checkpoint."""
    runner = SimpleNamespace(_resume=True, model=nn.Linear(2, 2),
                             _load_from=osp.join(tmp, 'green_mim.pth'),
                             work_dir=tmp)
    ckpt = dict(state_dict={'backbone.patch_embed.weight': torch.zeros(3),
                            'weight': torch.zeros(3, 3)}, meta={})
    SafeCheckpointHook(interval=1).after_load_checkpoint(runner, ckpt)


def imagenet_cfg(root):
    return Config(dict(train_dataloader=dict(dataset=dict(
        type='ImageNet', data_root=root, split='train'))))


def empty_imagenet(tmp):
    write(osp.join(tmp, 'imagenet', 'meta', 'train.txt'), b'\n')
    os.makedirs(osp.join(tmp, 'imagenet', 'train'), exist_ok=True)
    check_train_data(imagenet_cfg(osp.join(tmp, 'imagenet')))


def run_nan_guard(loss):
    runner = SimpleNamespace(
        iter=4, epoch=0,
        message_hub=SimpleNamespace(get_info=lambda k: '/w/iter_4.pth'))
    NaNGuardHook().after_train_iter(runner, 0, outputs=dict(loss=loss))


# ------------------------------------------------------------------ table
# id: (callable taking tmp_path, error type, words the message must hold)
CASES = {
    'image side not a multiple of 32': (
        lambda t: UniformMasking().transform(dict(img=np.zeros((100, 96, 3)))),
        ValueError, ['100x96', 'multiples of', '32 px']),
    'secondary ratio >= 1': (
        lambda t: UniformMasking(secondary_ratio=1.0),
        ValueError, ['1.0', '[0, 1)']),
    'secondary ratio < 0': (
        lambda t: UniformMasking(secondary_ratio=-0.25),
        ValueError, ['-0.25', '[0, 1)']),
    'odd mask grid': (
        lambda t: UniformMasking().sample(3, 4),
        ValueError, ['3x4', 'even']),
    'patch size not positive': (
        lambda t: UniformMasking(patch_size=0),
        ValueError, ['0', 'positive']),
    'unknown sampling mode': (
        lambda t: UniformMasking(sampling='random'),
        ValueError, ["'random'", "'iid'", "'balanced'"]),
    'UM window breaks compact equivalence': (
        lambda t: um_mae(7).loss(*um_batch()),
        ValueError, ['window_size=7', 'equivalence', 'window_size=8']),
    'GreenMIM mask unit != total stride': (
        lambda t: green_mim(mask_unit=16),
        ValueError, ['mask_unit (16)', 'total stride (32)']),
    'GreenMIM mask ratio >= 1': (
        lambda t: green_mim(mask_ratio=1.0),
        ValueError, ['1.0', '(0, 1)']),
    'GreenMIM mask ratio < 0': (
        lambda t: green_mim(mask_ratio=-0.5),
        ValueError, ['-0.5', '(0, 1)']),
    'GreenMIM image not divisible by mask unit': (
        lambda t: green_mim().random_mask(torch.zeros(1, 3, 200, 200)),
        ValueError, ['200x200', 'mask unit 32']),
    'FreezeOut t_0 = 0': (
        lambda t: freezeout(t_0=0), ValueError, ['t_0=0', '(0, 1]']),
    'FreezeOut t_0 > 1': (
        lambda t: freezeout(t_0=1.5), ValueError, ['t_0=1.5', '(0, 1]']),
    'FreezeOut unknown spacing': (
        lambda t: freezeout(spacing='quartic'),
        ValueError, ["'quartic'", "'cubic'", "'linear'"]),
    'FreezeOut model exposes no layers': (
        lambda t: freezeout(with_layers=False),
        ValueError, ['[0, 1, 2, 3]', 'layer_id', 'get_layer_depth']),
    'decoder pruning without multi-scale decoders': (
        lambda t: DecoderPruningHook().after_train_iter(
            SimpleNamespace(model=nn.Linear(2, 2)), 0),
        TypeError, ['Linear', 'decoder_layers']),
    'checkpoint of another architecture': (
        resume_other_arch,
        ValueError, ['green_mim.pth', 'another architecture',
                     'weight: (3, 3) vs (2, 2)',
                     'missing', 'load_from']),
    'truncated checkpoint file': (
        truncated_checkpoint,
        RuntimeError, ['iter_4.pth', 'truncated', 'earlier checkpoint']),
    'missing checkpoint file': (
        lambda t: load_checkpoint(osp.join(t, 'nope.pth')),
        FileNotFoundError, ['nope.pth']),
    'corrupt image in the dataset': (
        lambda t: load_image(write(osp.join(t, 'bad.png'),
                                   b'\x89PNG\r\n\x1a\n' + b'\0' * 40)),
        OSError, ['bad.png', 'readable image', "on_error='skip'"]),
    'non-image file in the dataset': (
        lambda t: load_image(write(osp.join(t, 'notes.jpg'), b'hello')),
        OSError, ['notes.jpg', 'readable image']),
    'unknown on_error policy': (
        lambda t: SafeLoadImageFromFile(on_error='ignore'),
        ValueError, ["'ignore'", "'raise'", "'skip'"]),
    'empty dataset folder': (
        empty_imagenet,
        ValueError, [osp.join('meta', 'train.txt'), 'no images',
                     'at least one']),
    'missing data root': (
        lambda t: check_train_data(imagenet_cfg(osp.join(t, 'no_such_dir'))),
        FileNotFoundError, ['no_such_dir', 'data_root', 'meta/train.txt']),
    'loss becomes NaN': (
        lambda t: run_nan_guard(torch.tensor(float('nan'))),
        FloatingPointError, ['loss=nan', 'iteration 5', 'finite',
                             'iter_4.pth']),
    'loss becomes inf': (
        lambda t: run_nan_guard(torch.tensor(float('inf'))),
        FloatingPointError, ['loss=inf', 'iter_4.pth']),
    'NaN guard interval not positive': (
        lambda t: NaNGuardHook(interval=0),
        ValueError, ['interval', '0', 'positive']),
}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_clear_error(case, tmp_path):
    fn, error, words = CASES[case]
    with pytest.raises(error) as info:
        fn(str(tmp_path))
    assert type(info.value) is error or issubclass(type(info.value), error)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize('gpus', ['0', 'two'])
def test_dist_train_gpus_must_be_positive_integer(gpus):
    import subprocess

    from _tiny_runs import ROOT
    proc = subprocess.run(['bash', 'tools/dist_train.sh', 'x.py', gpus],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"'{gpus}'" in proc.stderr and 'positive integer' in proc.stderr


# ------------------------------------------------- behaviour, not messages
def test_broken_images_are_skipped_and_logged(tmp_path):
    """on_error='skip': the dataset draws another image and the log names
    the broken file, so an epoch never stops half-way."""
    from mmengine.dataset import BaseDataset
    from mmengine.logging import MMLogger

    from _tiny_runs import make_image_folder
    make_image_folder(str(tmp_path), classes=('a', ), per_class=3)
    write(str(tmp_path / 'a' / 'broken.png'), b'not a png')
    files = sorted(os.listdir(tmp_path / 'a'))

    class Folder(BaseDataset):

        def load_data_list(self):
            return [dict(img_path=str(tmp_path / 'a' / f)) for f in files]

    ds = Folder(pipeline=[dict(type='mmum.SafeLoadImageFromFile',
                               on_error='skip')], serialize_data=False)
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        out = [ds[i] for i in range(len(ds))]
    finally:
        logger.removeHandler(handler)
    assert all(o['img'].shape == (48, 48, 3) for o in out)
    assert any('skipping' in m and 'broken.png' in m for m in logged)

    strict = Folder(pipeline=[dict(type='mmum.SafeLoadImageFromFile')],
                    serialize_data=False)
    with pytest.raises(OSError, match='broken.png'):
        [strict[i] for i in range(len(strict))]


def test_nan_guard_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    """A Runner whose loss turns NaN at iteration 3 stops there: the error
    names the iteration and the last good checkpoint (iter_2), which is
    intact, and no checkpoint of the bad state is written."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))
            self.calls = 0

        def forward(self, x, mode='loss'):
            self.calls += 1
            loss = (self.w * x).sum()
            if self.calls >= 3:
                loss = loss * float('nan')
            return dict(loss=loss)

    runner = Runner(
        model=Toy(), work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=[dict(x=torch.ones(2))] * 8, batch_size=1,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=6),
        default_hooks=dict(checkpoint=dict(type='mmum.SafeCheckpointHook',
                                           by_epoch=False, interval=1)),
        custom_hooks=[dict(type='mmum.NaNGuardHook')],
        default_scope='mmengine',
        experiment_name=f'nan_{os.getpid()}_{id(tmp_path)}')
    with pytest.raises(FloatingPointError, match=r'iteration 3 .*iter_2\.pth'):
        runner.train()
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith('.pth')) == \
        ['iter_1.pth', 'iter_2.pth']
    assert open(tmp_path / 'last_checkpoint').read().endswith('iter_2.pth')
    ckpt = torch.load(tmp_path / 'iter_2.pth', map_location='cpu')
    assert torch.isfinite(ckpt['state_dict']['w']).all()


def test_pointer_write_is_atomic(tmp_path, monkeypatch):
    """A crash between writing the temp file and renaming it leaves the old
    ``last_checkpoint`` content in place."""
    from mmum.engine.hooks import safe_checkpoint
    path = str(tmp_path / 'last_checkpoint')
    safe_checkpoint.atomic_write_bytes(path, b'/w/iter_2.pth')

    def crash(*args):
        raise KeyboardInterrupt('killed')

    monkeypatch.setattr(safe_checkpoint.os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        safe_checkpoint.atomic_write_bytes(path, b'/w/iter_4.pth')
    assert open(path).read() == '/w/iter_2.pth'
