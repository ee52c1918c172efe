"""``torch.compile`` of the pre-training losses (mmum/engine/compile.py).

* mmengine's ``compile`` key compiles the model's ``loss`` (not the whole
  ``train_step``, whose optimizer step fails to compile on torch 2.x);
* the losses of UM-MAE and LocalMIM / ViTFreeze compile to one graph (no
  graph break) and new masks of the same batch size reuse it (no
  recompilation);
* slow: ``tools/train.py`` trains 3 compiled iterations of the tiny UM-MAE
  and ViTFreeze configs with one compiled frame, and inductor's loss and
  gradients equal eager ones on the same weights and masks.
"""
import copy
import os.path as osp
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch._dynamo
from mmcv.cnn.bricks.drop import DropPath
from mmengine.config import Config
from mmengine.dataset import Compose, default_collate
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import mmum  # noqa: F401
from mmum.engine.compile import compile_loss
from mmum.registry import MODELS
from _tiny_runs import ROOT, load_tool, make_imagenet_folder

pytestmark = pytest.mark.usefixtures('one_thread')

# tiny versions of configs/um_mae/swin_t_200e.py and
# configs/vitfreeze/vit_b_100e.py; the model tests shrink the ViTFreeze one
# further (2 blocks, 2 decoders) and turn drop path on (a DropPath in every
# block), and use configs/simmim/swin_t_256_200e.py with a tiny Swin
CASES = {
    'um_mae': ('tests/configs/tiny_um_mae.py', {}),
    'vitfreeze': ('tests/configs/tiny_vitfreeze.py', dict(
        backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                feedforward_channels=64),
                      out_indices=(0, 1), drop_path_rate=0.1),
        target_generator=dict(cell_sizes=(16, 32)))),
    'simmim': ('configs/simmim/swin_t_256_200e.py', dict(
        backbone=dict(arch=dict(_delete_=True, embed_dims=16,
                                depths=[1, 1, 1, 1],
                                num_heads=[1, 1, 2, 2])),
        neck=dict(in_channels=128))),
}


def build(case):
    """The config's model (data preprocessor merged as the Runner does) in
    train mode, and its train pipeline after the image loading."""
    path, shrink = CASES[case]
    cfg = Config.fromfile(osp.join(ROOT, path))
    cfg.merge_from_dict(dict(model=shrink))
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope',
                                                      'mmum')):
        torch.manual_seed(0)
        model = MODELS.build(model_cfg)
        model.init_weights()
        pipeline = Compose(cfg.train_dataloader.dataset.pipeline[1:])
    return model.train(), pipeline


def batch(model, pipeline, seed, n=2):
    """``n`` real photos through the pipeline (its crops and masks drawn
    with ``seed``) and the model's data preprocessor."""
    from skimage import data
    random.seed(seed)
    np.random.seed(seed)
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    samples = []
    for i in range(n):
        img = np.ascontiguousarray(photos[i % 3][..., ::-1])
        samples.append(pipeline(dict(img=img, img_shape=img.shape[:2],
                                     ori_shape=img.shape[:2])))
    return model.data_preprocessor(default_collate(samples), True)


def seeded(fn, data, seed=0):
    """``fn(**data)`` after seeding torch (LocalMIM draws its masks and the
    drop paths in the forward)."""
    torch.manual_seed(seed)
    return fn(data['inputs'], data['data_samples'])


def test_vit_drop_rates_are_python_floats():
    """mmpretrain's ViT spaces its drop rates with np.linspace; numpy
    scalars would break the compiled graph at every DropPath."""
    for cfg in (dict(type='mmum.LocalMIMViT', arch='b', img_size=32,
                     drop_path_rate=0.1, out_indices=(0, 1, 2)),
                dict(type='mmum.UMViT', arch='b', img_size=32,
                     drop_path_rate=0.1)):
        cfg['arch'] = dict(embed_dims=16, num_layers=3, num_heads=2,
                           feedforward_channels=32)
        model = MODELS.build(cfg)
        rates = [m.drop_prob for m in model.modules()
                 if isinstance(m, DropPath)]
        assert len(rates) == 6 and {type(r) for r in rates} == {float}
        assert rates[-1] == pytest.approx(0.1)


@pytest.mark.parametrize('case', list(CASES))
def test_loss_is_one_graph_reused_for_new_masks(case):
    """fullgraph=True: any graph break raises. Two batches with other
    crops and masks of the same size: compiled once."""
    torch._dynamo.reset()
    model, pipeline = build(case)
    counter = CompileCounter()
    compiled = torch.compile(model.loss, backend=counter, fullgraph=True)
    for seed in (0, 1):
        data = batch(model, pipeline, seed)
        got = seeded(compiled, data)
        want = seeded(model.loss, data)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=0)
    assert counter.frame_count == 1, 'recompiled for new masks'
    torch._dynamo.reset()


def test_mmengine_compile_key_compiles_the_loss():
    """``compile=...`` in a config reaches mmum's switch: the loss is
    compiled, the Runner's ``train_step`` is not; a bad value is named."""
    model, _ = build('vitfreeze')
    loss = model.loss
    logs = []
    runner = SimpleNamespace(
        cfg=Config(dict(compile=dict(backend='eager'))), model=model,
        logger=SimpleNamespace(info=logs.append))
    Runner._maybe_compile(runner, 'train_step')
    assert model.loss is not loss and 'train_step' not in vars(model)
    assert model.loss._torchdynamo_orig_callable == loss
    assert 'LocalMIM.loss is compiled' in logs[0], logs
    runner.cfg = Config(dict(compile='yes'))
    with pytest.raises(TypeError, match="compile must be True, False or a "
                       "dict of torch.compile arguments.*got 'yes'"):
        Runner._maybe_compile(runner, 'train_step')
    with pytest.raises(TypeError, match='has none'):
        compile_loss(torch.nn.Linear(2, 2), True)


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')))


@pytest.mark.slow  # inductor compiles a forward and a backward: minutes
@pytest.mark.parametrize('case, switch', [
    ('um_mae', ['--compile']),  # tools/train.py's flag
    ('vitfreeze', ['--cfg-options', 'compile=True']),  # mmengine's key
])
def test_train_tool_three_compiled_iterations(case, switch, imagenet,
                                              tmp_path):
    """3 iterations through tools/train.py with inductor: the loss is one
    graph, compiled once (no graph break, no recompilation for the new
    masks of iterations 2 and 3), and the optimizer step ran eagerly."""
    torch._dynamo.reset()
    counters.clear()
    runner = load_tool('train').main([
        osp.join(ROOT, CASES[case][0]), '--work-dir', str(tmp_path),
        *switch, '--cfg-options',
        f'train_dataloader.dataset.data_root={imagenet}',
        'train_cfg.max_iters=3'])
    assert runner.iter == 3
    model = runner.model
    assert hasattr(model.loss, '_torchdynamo_orig_callable')
    assert dict(counters['graph_break']) == {}
    assert counters['stats']['unique_graphs'] == 1
    assert counters['frames']['total'] == counters['frames']['ok'] == 1
    # the AdamW state exists: the optimizer stepped (outside the graph)
    state = runner.optim_wrapper.optimizer.state
    assert state and all(s['step'] == 3 for s in state.values())
    torch._dynamo.reset()


@pytest.mark.slow  # inductor: minutes
@pytest.mark.parametrize('case', ['um_mae', 'vitfreeze'])
def test_inductor_loss_and_grads_equal_eager(case):
    """Same weights and batch (crops, masks; LocalMIM's in-model masks and
    drop paths from the same seed with inductor's ``fallback_random``)."""
    import torch._inductor.config as inductor_config
    torch._dynamo.reset()
    model, pipeline = build(case)
    data = batch(model, pipeline, seed=0)
    results = []
    with inductor_config.patch(fallback_random=True):
        for fn in (model.loss, torch.compile(model.loss)):
            model.zero_grad()
            losses = seeded(fn, data)
            sum(losses.values()).backward()
            results.append((losses, {n: p.grad.clone()
                                     for n, p in model.named_parameters()
                                     if p.grad is not None}))
    (want, want_grads), (got, got_grads) = results
    assert got.keys() == want.keys() and got_grads.keys() == want_grads.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    for n in want_grads:  # summation order differs: float rounding
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-4,
                                   atol=1e-6, msg=n)
    torch._dynamo.reset()


@pytest.mark.slow  # 12 iterations, traced (backend='eager'): ~1.5 min
def test_freezeout_recompiles_once_per_freezing_state(imagenet, tmp_path):
    """ViTFreeze: each layer that freezes (and each decoder pruned) changes
    the graph (the frozen prefix runs without autograd), so the loss is
    recompiled then, and only then: one graph per freezing state."""
    torch._dynamo.reset()
    counters.clear()
    states = []

    class Record:
        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            model = runner.model
            states.append((model.num_frozen_layers(),
                           tuple(sorted(model.pruned_decoders))))

    train_tool = load_tool('train')
    cfg = train_tool.merge_args(
        Config.fromfile(osp.join(ROOT, CASES['vitfreeze'][0])),
        train_tool.parse_args([
            CASES['vitfreeze'][0], '--work-dir', str(tmp_path),
            '--cfg-options', f'train_dataloader.dataset.data_root={imagenet}',
            'compile.backend=eager', 'resume=False']))
    runner = Runner.from_cfg(cfg)
    from mmengine.hooks import Hook
    runner.register_hook(type('RecordHook', (Record, Hook), {})(), 'LOWEST')
    runner.train()
    # the state after iteration i is the state the loss of i + 1 sees
    seen = {(0, ())} | set(states[:-1])
    assert len(seen) >= 4  # layers froze and decoders were pruned
    assert dict(counters['graph_break']) == {}
    assert counters['frames']['total'] == len(seen)
    torch._dynamo.reset()
