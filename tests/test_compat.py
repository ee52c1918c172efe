"""mmum.utils.compat: mmengine checkpoints under torch's ``weights_only``, and
the CPU fallbacks of mmum.utils.dist."""
import io
import os
import pickle
import uuid
import zipfile

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub
from torch._weights_only_unpickler import (_get_allowed_globals,
                                           get_globals_in_pkl)

import mmum  # noqa: F401  applies the shims
from mmum.utils import compat
from mmum.utils.dist import cpu_fallback_amp, setup_cpu_distributed

from _tiny_runs import (TINY_CFG, drop_new_default_scopes, free_port,
                        load_tool, make_image_folder)


class _NotAllowed:
    pass


def _names(globals_):
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
            for g in globals_}


@pytest.fixture(scope='module', autouse=True)
def _isolate_default_scope():
    from mmengine.registry import DefaultScope
    before = set(DefaultScope._instance_dict)
    yield
    drop_new_default_scopes(before)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner (tools/train.py, 2 iters)."""
    train_tool = load_tool('train')
    tmp = tmp_path_factory.mktemp('compat')
    data = make_image_folder(str(tmp / 'images'), per_class=2)
    train_tool.main([
        TINY_CFG, '--work-dir', str(tmp / 'work'), '--cfg-options',
        f'train_dataloader.dataset.data_root={data}', 'train_cfg.max_iters=2',
        'default_hooks.checkpoint.interval=2',
        f'experiment_name=c{uuid.uuid4().hex[:8]}'])
    return str(tmp / 'work' / 'iter_2.pth')


def test_runner_checkpoint_needs_exactly_the_allowed_globals(
        runner_checkpoint, monkeypatch):
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    # every global is allowed now ...
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        runner_checkpoint) == []
    # ... and these are the ones beyond torch's own allow-list, as documented
    # in mmum/utils/compat.py
    with zipfile.ZipFile(runner_checkpoint) as z:
        pkl = next(n for n in z.namelist() if n.endswith('data.pkl'))
        found = get_globals_in_pkl(io.BytesIO(z.read(pkl)))
    unsafe = found - set(_get_allowed_globals())
    assert unsafe == {
        'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr',
        'numpy._core.multiarray._reconstruct',
        'numpy._core.multiarray.scalar', 'numpy.ndarray', 'numpy.dtype'
    }
    assert unsafe <= _names(torch.serialization.get_safe_globals())

    ckpt = torch.load(runner_checkpoint, weights_only=True)
    assert ckpt['meta']['iter'] == 2
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and np.isfinite(loss.mean())
    # default torch.load (weights_only=True on torch >= 2.6) works too, and
    # so does the message hub restore that resume performs
    hub = MessageHub.get_instance(f'compat-{uuid.uuid4().hex[:8]}')
    hub.load_state_dict(torch.load(runner_checkpoint)['message_hub'])
    assert hub.get_scalar('train/loss').current() == loss.current()


def test_numpy_objects_round_trip(tmp_path):
    buf = HistoryBuffer()
    for v in (1.5, 2.5):
        buf.update(v)
    obj = dict(buf=buf, f64=np.float64(0.25), i64=np.int64(3),
               arr=np.arange(6, dtype=np.int32).reshape(2, 3),
               flags=np.array([True, False]), f16=np.ones(2, np.float16))
    path = tmp_path / 'np.pth'
    torch.save(obj, path)
    out = torch.load(path, weights_only=True)
    assert out['buf'].mean() == 2.0 and out['f64'] == 0.25
    assert out['i64'] == 3 and out['arr'].dtype == np.int32
    np.testing.assert_array_equal(out['arr'], obj['arr'])
    np.testing.assert_array_equal(out['flags'], obj['flags'])


def test_weights_only_safety_is_kept(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match='_NotAllowed'):
        torch.load(path)

    # getattr is only allowed for HistoryBuffer's statistics methods
    class Sneaky:
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    torch.save({'x': Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError, match="'__init__'"):
        torch.load(path)
    assert compat._statistics_getattr(HistoryBuffer, 'mean') is \
        HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError, match='os'):
        compat._statistics_getattr(os, 'system')


def test_apply_is_idempotent():
    before = len(torch.serialization.get_safe_globals())
    compat.apply()
    assert len(torch.serialization.get_safe_globals()) == before


def _amp_cfg():
    return Config(dict(optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale='dynamic',
        optimizer=dict(type='AdamW', lr=1e-3))))


def test_amp_switches_to_the_cpu_wrapper_without_cuda():
    """More in tests/test_cpu_amp.py (bf16 / fp32, the log line)."""
    cfg = _amp_cfg()
    cpu_fallback_amp(cfg)
    expected = ('AmpOptimWrapper' if torch.cuda.is_available() else
                'mmum.CPUAmpOptimWrapper')
    assert cfg.optim_wrapper.type == expected


def test_setup_cpu_distributed(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip('GPU machines use mmengine\'s own launcher path')
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl')),
                      find_unused_parameters=True))
    assert setup_cpu_distributed(cfg, 'none') is False
    assert 'model_wrapper_cfg' not in cfg
    with pytest.raises(ValueError, match="'none', 'pytorch'.*got 'torchrun'"):
        setup_cpu_distributed(cfg, 'torchrun')

    assert not torch_dist.is_initialized()
    for k, v in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                     MASTER_ADDR='127.0.0.1',
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    try:
        assert setup_cpu_distributed(cfg, 'pytorch') is True
        assert torch_dist.is_initialized()
        assert torch_dist.get_backend() == 'gloo'
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert cfg.model_wrapper_cfg == dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=True, device_ids=None)
    finally:
        torch_dist.destroy_process_group()


def test_setup_cpu_distributed_needs_launcher_env(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip('GPU machines use mmengine\'s own launcher path')
    for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE'\]"):
        setup_cpu_distributed(Config(dict()), 'pytorch')


def test_bias_table_resize_without_interp2d():
    """mmpretrain's Swin bias-table resize (SciPy >= 1.14 has no interp2d):
    a table linear in the geometric offsets maps to the same plane at the
    new integer offsets, and mmpretrain's Swin uses the shim."""
    import numpy as np
    from mmpretrain.models.backbones import swin_transformer

    from mmum.utils.compat import resize_relative_position_bias_table
    assert swin_transformer.resize_relative_position_bias_table is \
        resize_relative_position_bias_table or not hasattr(
            __import__('scipy.interpolate').interpolate, 'interp2d')
    src, dst = 27, 13  # window 14 -> window 7
    half = src // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        lo, hi = (lo, q) if (1 - q**half) / (1 - q) > dst // 2 else (q, hi)
    dis = np.cumsum([1] + [q**(i + 1) for i in range(half - 1)])
    coords = np.concatenate([-dis[::-1], [0], dis])
    yy, xx = np.meshgrid(coords, coords, indexing='ij')
    table = torch.from_numpy(np.stack([2 * yy + xx, yy - 3 * xx], -1)
                             .reshape(-1, 2)).float()
    out = resize_relative_position_bias_table(src, dst, table, 2)
    assert out.shape == (dst * dst, 2)
    ny, nx = np.meshgrid(np.arange(-6, 7), np.arange(-6, 7), indexing='ij')
    want = np.stack([2 * ny + nx, ny - 3 * nx], -1).reshape(-1, 2)
    assert np.allclose(out.numpy(), want, atol=1e-3)
