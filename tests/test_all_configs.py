"""Every config in ``configs/`` builds: its model, the Compose of its train
pipeline and its optimizer wrapper (full size, no weights loaded)."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, DefaultScope

import mmum  # noqa: F401
from mmum.utils.dist import cpu_fallback_amp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if f'{osp.sep}_base_{osp.sep}' not in p)
# configs that need an optional package for their train pipeline
OPTIONAL = {'InstaBoost': 'instaboostfast'}


def train_pipeline(cfg):
    """The train pipeline, looking through dataset wrappers."""
    dataset = cfg.train_dataloader.dataset
    while 'pipeline' not in dataset:
        dataset = dataset.get('dataset') or dataset.datasets[0]
    return dataset.pipeline


def test_every_directory_is_covered():
    dirs = {p.split(osp.sep)[1] for p in CONFIGS}
    assert {'um_mae', 'green_mim', 'finetune', 'mmdet', 'mmseg'} <= dirs


def _param(path):
    # the Swin-L models take seconds each to build on a loaded CPU
    large = 'swin_l' in path or 'htcpp' in path
    return pytest.param(path, marks=pytest.mark.slow) if large else path


@pytest.mark.parametrize('path', [_param(p) for p in CONFIGS])
def test_config_builds(path, monkeypatch):
    cfg = Config.fromfile(osp.join(ROOT, path))
    assert 'mmum' in cfg.custom_imports['imports'], path
    cpu_fallback_amp(cfg)  # AmpOptimWrapper needs CUDA
    scope = cfg.get('default_scope', 'mmum')
    with DefaultScope.overwrite_default_scope(scope):
        model_cfg = copy.deepcopy(cfg.model)
        if cfg.get('data_preprocessor') is not None:  # as the Runner does
            model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
        model = build_model(model_cfg, monkeypatch)
        assert sum(p.numel() for p in model.parameters()) > 0

        pipeline = train_pipeline(cfg)
        missing = [pkg for t, pkg in OPTIONAL.items()
                   if any(s.get('type') == t for s in pipeline)]
        missing = [pkg for pkg in missing if not _importable(pkg)]
        if missing:
            # the optional package is named in the error
            with pytest.raises(ImportError, match=missing[0]):
                Compose(pipeline)
        else:
            assert len(Compose(pipeline).transforms) == len(pipeline)

        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        n_opt = sum(len(g['params'])
                    for g in optim_wrapper.optimizer.param_groups)
        n_train = sum(1 for p in model.parameters() if p.requires_grad)
        assert n_opt == n_train, path


INITS = ('uniform_', 'normal_', 'trunc_normal_', 'kaiming_uniform_',
         'kaiming_normal_', 'xavier_uniform_', 'xavier_normal_')


def build_model(model_cfg, monkeypatch):
    """Build without the default random initialisation of every layer
    (seconds per large model on a loaded CPU; the weights are not used)."""
    with monkeypatch.context() as m:
        for name in INITS:
            m.setattr(torch.nn.init, name, lambda t, *args, **kwargs: t)
        return MODELS.build(model_cfg)


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None
