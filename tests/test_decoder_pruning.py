import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmpretrain.engine.optimizers import \
    LearningRateDecayOptimWrapperConstructor
from mmpretrain.structures import DataSample

import mmum  # noqa: F401
from mmum.engine.hooks import DecoderPruningHook
from mmum.engine.schedulers.freezeout import FreezeOutLR

from test_local_mim import TINY_ARCH, tiny_local_mim  # noqa: E402


pytestmark = pytest.mark.usefixtures('one_thread')



def optim_for(model):
    return LearningRateDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3,
                                            weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=1.0))(model)


def test_pruning_removes_work_and_params():
    model = tiny_local_mim()
    optim = optim_for(model)
    img = torch.rand(2, 3, 32, 32)
    # one step so that every parameter has AdamW state
    sum(model.loss(img, None).values()).backward()
    optim.step()
    sched = FreezeOutLR(optim, t_0=0.5, end=100, by_epoch=False)
    sched.freeze_layers([0, 1])  # patch embedding and block 1
    runner = SimpleNamespace(model=model, optim_wrapper=optim,
                             logger=MMLogger.get_current_instance())
    DecoderPruningHook().after_train_iter(runner, 0)
    assert model.pruned_decoders == {0}  # decoder 0 reads block 1

    calls = [0] * 4
    for k, dec in enumerate(model.neck):
        dec.register_forward_hook(
            lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
    made = []
    model.target_generator.register_forward_hook(
        lambda m, i, o: made.append([t.shape[-1] for t in o]))
    losses = model.loss(img, None)
    assert calls == [0, 1, 1, 1]
    assert made == [[8, 4, 2]]  # no 16x16 HOG target any more
    assert 'loss_16x16' not in losses
    in_optim = {id(p) for g in optim.param_groups for p in g['params']}
    for p in model.neck[0].parameters():
        assert id(p) not in in_optim and not p.requires_grad
        assert p not in optim.optimizer.state
    assert all(id(p) in in_optim for p in model.neck[1].parameters())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.neck[0].parameters())


def test_hook_needs_prunable_model():
    runner = SimpleNamespace(model=torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match='decoder_layers'):
        DecoderPruningHook().after_train_iter(runner, 0)


class Images(torch.utils.data.Dataset):

    def __init__(self, n=24):  # one epoch: no dataloader restart (sleeps)
        g = torch.Generator().manual_seed(0)
        self.imgs = torch.randint(0, 256, (n, 3, 32, 32), generator=g,
                                  dtype=torch.uint8)

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return dict(inputs=self.imgs[i], data_samples=DataSample())


class Reseed(Hook):
    """Masks depend on the iteration only, as they would on a fixed stream
    of random numbers: a resumed run draws the same masks."""
    priority = 'LOWEST'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        torch.manual_seed(1000 + runner.iter)


class Record(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.rows = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        sched = runner.param_schedulers[0]
        self.rows[runner.iter] = dict(
            lrs=sorted((g['layer_id'], g['lr'])
                       for g in runner.optim_wrapper.optimizer.param_groups),
            frozen=list(sched.frozen_layers),
            pruned=sorted(model.pruned_decoders),
            trainable=[p.requires_grad for p in model.parameters()],
            training=[m.training for m in model.backbone.layers])

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.rows[runner.iter]['loss'] = float(outputs['loss'])


def make_runner(work_dir, resume_from=None, max_iters=12):
    record = Record()
    runner = Runner(
        model=dict(
            type='mmum.LocalMIM',
            data_preprocessor=dict(type='mmpretrain.SelfSupDataPreprocessor',
                                   mean=[127.5] * 3, std=[127.5] * 3),
            backbone=dict(type='mmum.LocalMIMViT', arch=TINY_ARCH,
                          img_size=32, patch_size=8,
                          out_indices=(0, 1, 2, 3)),
            neck=dict(type='mmum.LocalMIMDecoder', embed_dims=16,
                      num_heads=2),
            head=dict(type='mmpretrain.MIMHead',
                      loss=dict(type='mmpretrain.PixelReconstructionLoss',
                                criterion='L2')),
            target_generator=dict(type='mmum.HOGTarget',
                                  cell_sizes=(2, 4, 8, 16))),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Images(), batch_size=2, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=1.0)),
        # 5 encoder layers freeze at steps 6, 7.5, 9, 10.5 and never
        param_scheduler=dict(type='mmum.FreezeOutLR', t_0=0.5,
                             spacing='linear', warmup=2, by_epoch=False,
                             end=12),
        custom_hooks=[
            dict(type='mmum.FreezeOutHook'),
            dict(type='mmum.DecoderPruningHook'), record, Reseed()
        ],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=100)),
        randomness=dict(seed=0),
        load_from=resume_from,
        resume=resume_from is not None,
    )
    return runner, record


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    full, rec_full = make_runner(tmp_path_factory.mktemp('full'))
    full.train()
    assert rec_full.rows[11]['frozen'] == [0, 1, 2, 3]
    assert rec_full.rows[11]['pruned'] == [0, 1, 2]
    return full, rec_full


# at 8 layer 1 has just frozen and its decoder is pruned right after the
# checkpoint is written; at 10 decoders 0 and 1 are already pruned
@pytest.mark.parametrize('kill_at', [8, 10])
def test_kill_and_resume_mid_freezing(tmp_path, uninterrupted, kill_at):
    full, rec_full = uninterrupted
    ckpt = osp.join(full.work_dir, f'iter_{kill_at}.pth')
    # a run killed after `kill_at` iterations left this checkpoint behind
    resumed, rec = make_runner(tmp_path / 'resumed', resume_from=ckpt)
    resumed.train()
    assert sorted(rec.rows) == list(range(kill_at, 12))
    for it, row in rec.rows.items():
        ref = rec_full.rows[it]
        for key in ('lrs', 'frozen', 'pruned', 'trainable', 'training'):
            assert row[key] == ref[key], (it, key)
        assert row['loss'] == pytest.approx(ref['loss'], rel=1e-6), it
    # frozen blocks run in eval mode
    assert rec.rows[11]['training'] == [False, False, False, True]
    final_a = full.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, final_a[k], rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # three torchrun launches of 2 CPU processes: ~1-2 min
def test_ddp_two_processes_kill_and_resume(tmp_path):
    """configs/vitfreeze/vit_b_100e.py (shrunk) under DDP on gloo: training
    goes through freezing and pruning (find_unused_parameters=True), and a
    run killed at iteration 8 resumes to the same frozen layers, pruned
    decoders and optimizer groups as the uninterrupted run."""
    from _tiny_runs import ROOT, free_port, make_imagenet_folder, run_tool
    data = make_imagenet_folder(str(tmp_path / 'imagenet'), size=80)
    cfg = osp.join(ROOT, 'tests', 'configs', 'tiny_vitfreeze.py')

    def launch(work, *args, opts=()):
        run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir',
                  str(work), *args, '--cfg-options',
                  f'train_dataloader.dataset.data_root={data}', *opts],
                 env={'PORT': str(free_port())})

    full, killed = tmp_path / 'full', tmp_path / 'killed'
    launch(full)
    # "killed" after 8 iterations: same schedule (end=12), loop stops at 8
    launch(killed, opts=['train_cfg.max_iters=8'])
    launch(killed, '--resume', str(killed / 'iter_8.pth'))
    a = torch.load(full / 'iter_12.pth', map_location='cpu')
    b = torch.load(killed / 'iter_12.pth', map_location='cpu')
    assert b['meta']['iter'] == 12
    for ckpt in (a, b):
        assert ckpt['param_schedulers'][0]['frozen_layers'] == [0, 1, 2, 3]
        assert ckpt['meta']['pruned_decoders'] == [0, 1, 2]

    def groups(ckpt):
        return [(g['layer_id'], g['lr'], len(g['params']))
                for g in ckpt['optimizer']['param_groups']]

    assert groups(a) == groups(b)
    # nothing of the frozen layers / pruned decoders is left in the optimizer
    assert not any(g['layer_id'] < 4 for g in a['optimizer']['param_groups'])
    assert not any(g['param_name'].startswith(('neck.0.', 'neck.1.',
                                               'neck.2.'))
                   for g in a['optimizer']['param_groups'])


def test_freezeout_hook_checks():
    from mmum.engine.hooks import FreezeOutHook
    model = tiny_local_mim()
    optim = optim_for(model)
    runner = SimpleNamespace(model=model, param_schedulers=[])
    with pytest.raises(ValueError, match='no FreezeOutLR'):
        FreezeOutHook().before_train(runner)
    runner.param_schedulers = [FreezeOutLR(optim, end=10, by_epoch=False)]
    FreezeOutHook().before_train(runner)
    runner.model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match='get_layer_depth'):
        FreezeOutHook().before_train(runner)
