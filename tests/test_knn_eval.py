"""mmum.KNNEvalHook: weighted k-NN accuracy during pre-training.

The data are generated shapes whose classes differ visibly (colour and
shape), written in mmpretrain's CustomDataset layout.
"""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

import mmum  # noqa: F401
from _tiny_runs import free_port, run_tool
from _watch import (CFG, CLASSES, ENV, data_opts, datasets, knn_rows,
                    make_shapes_dataset, train)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp('shapes'))


def tiny_um_mae():
    from mmengine.config import Config

    from mmum.registry import MODELS
    cfg = Config.fromfile(osp.join(osp.dirname(__file__), '..', CFG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def reference_knn(root, model, k=20, T=0.07):
    """Independent top-1/top-5: images read with OpenCV, normalised with the
    preprocessor's statistics by hand, last-stage global average,
    L2-normalised; weighted k-NN in NumPy (or scikit-learn's
    KNeighborsClassifier when it is installed)."""
    import cv2
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])

    def load(split):
        feats, labels = [], []
        for label, c in enumerate(sorted(CLASSES)):
            folder = osp.join(root, split, c)
            for name in sorted(os.listdir(folder)):
                img = cv2.imread(osp.join(folder, name))[..., ::-1]
                x = torch.from_numpy(((img - mean) / std).transpose(
                    2, 0, 1).copy()).float()[None]
                with torch.no_grad():
                    f = model.backbone(x, mask=None)[-1].mean((2, 3))[0]
                feats.append((f / f.norm()).numpy().astype(np.float64))
                labels.append(label)
        return np.stack(feats), np.array(labels)

    (xt, yt), (xv, yv) = load('train'), load('val')
    try:
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError:
        sim = xv @ xt.T
        nn = np.argsort(-sim, axis=1, kind='stable')[:, :k]
        votes = np.zeros((len(xv), len(CLASSES)))
        for i in range(len(xv)):
            for j in nn[i]:
                votes[i, yt[j]] += np.exp(sim[i, j] / T)
    else:
        knn = KNeighborsClassifier(
            k, metric='cosine',
            weights=lambda d: np.exp((1 - d) / T)).fit(xt, yt)
        votes = knn.predict_proba(xv)
    order = np.argsort(-votes, axis=1, kind='stable')
    return {'top1': 100 * np.mean(order[:, 0] == yv),
            'top5': 100 * np.mean((order[:, :5] == yv[:, None]).any(1))}


def test_top1_equals_independent_computation(shapes):
    """Fixed (random-init, seeded) tiny UM-MAE Swin: the hook's numbers
    equal an independent computation, and the model's modes are restored
    (a submodule left in eval stays in eval)."""
    from mmum.engine.hooks import KNNEvalHook
    model = tiny_um_mae()
    model.train()
    model.backbone.stages[0].eval()  # e.g. a FreezeOut-frozen stage
    hook = KNNEvalHook(**datasets(shapes), batch_size=5, num_workers=0,
                       pipeline=[dict(type='LoadImageFromFile'),
                                 dict(type='PackInputs')])
    got = hook.evaluate(model)
    want = reference_knn(shapes, model)
    assert got['top1'] == pytest.approx(want['top1'])
    assert got['top5'] == pytest.approx(want['top5'])
    assert model.training and model.neck.training
    assert not model.backbone.stages[0].training
    assert model.backbone.stages[1].training


def test_weighted_knn_by_hand():
    """Two classes on a circle: the votes are exp(cos/T) of the k nearest."""
    from mmum.engine.hooks.knn_eval import weighted_knn
    ang = torch.tensor([0., 0.1, 0.2, 3.0, 3.1])
    train = torch.stack([ang.cos(), ang.sin()], 1)
    labels = torch.tensor([0, 0, 0, 1, 1])
    q = torch.tensor([[1., 0.], [-1., 0.]])
    assert weighted_knn(train, labels, q, torch.tensor([0, 1]), k=3,
                        topk=(1, )) == {'top1': 100.0}
    # k=5 with a large T: every neighbour votes ~1, class 0 has 3 votes
    assert weighted_knn(train, labels, q, torch.tensor([0, 1]), k=5,
                        temperature=1e3, topk=(1, 2)) == {
                            'top1': 50.0, 'top2': 100.0}


@pytest.mark.parametrize('kwargs, match', [
    (dict(interval=0), 'interval must be a positive integer'),
    (dict(train_subset=0), 'train_subset must be None'),
    (dict(temperature=0), 'temperature must be > 0'),
    (dict(train_dataset='data/x'), 'train_dataset must be a dataset config'),
])
def test_bad_arguments(kwargs, match):
    from mmum.engine.hooks import KNNEvalHook
    args = dict(datasets('data/x'), **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        KNNEvalHook(**args)


def test_trained_encoder_above_chance_random_labels_near_chance(
        tmp_path, shapes):
    """After 30 UM-MAE iterations on the shapes the k-NN top-1 on the true
    labels is far above chance (25 %; measured: 57 % after 10 iterations,
    68 % after 30, 82 % after 60); the same features with random labels
    score near chance. The numbers reach the MessageHub, the Visualizer's
    scalars file and the log."""
    # a second hook on the same images with random labels
    base = osp.join(osp.dirname(osp.abspath(__file__)), 'configs',
                    'watch_um_mae.py')
    hook = dict(type='mmum.KNNEvalHook', by_epoch=False, interval=15,
                img_size=64, num_workers=0)
    hooks = [dict(hook, **datasets(shapes)),
             dict(type='mmum.ReconstructionHook', by_epoch=False, interval=30,
                  dataset=datasets(shapes)['val_dataset'], num_images=2),
             dict(hook, prefix='rnd', interval=30,
                  **datasets(shapes, random_labels=True))]
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f'_base_ = {base!r}\ncustom_hooks = {hooks!r}\n')
    work = tmp_path / 'work'
    train(work, shapes, 'train_cfg.max_iters=30', cfg=str(cfg))
    true, rnd = knn_rows(work), knn_rows(work, 'rnd')
    assert [r['iter'] for r in true] == [15, 30] and len(rnd) == 1
    assert true[-1]['num_train'] == 48 and true[-1]['num_val'] == 28
    assert true[-1]['top1'] >= 50, true
    # 28 queries, chance 25 %: 3 standard deviations are ~25 points
    assert rnd[0]['top1'] <= 50, rnd
    assert true[-1]['time'] > 0
    scalars = [json.loads(line) for line in open(
        next(work.glob('*/vis_data/scalars.json')))]
    logged = [r for r in scalars if 'knn/top1' in r]
    assert [r['step'] for r in logged] == [15, 30]
    assert logged[-1]['knn/top1'] == pytest.approx(true[-1]['top1'])
    log = open(next(work.glob('*/*.log'))).read()
    assert 'k-NN (k=20, T=0.07) on 48 train / 28 val images' in log


def test_resume_continues_schedule(tmp_path, shapes):
    """Evaluations every 3 iterations, checkpoints every 2: a run stopped
    at iteration 4 and resumed to 9 evaluates at 3, 6, 9 (none twice, none
    skipped); the resumed run's numbers equal the uninterrupted run's."""
    full, part = tmp_path / 'full', tmp_path / 'part'
    opts = ('custom_hooks.0.interval=3', 'custom_hooks.0.val_subset=8',
            'custom_hooks.0.train_subset=16')
    train(full, shapes, 'train_cfg.max_iters=9', *opts)
    train(part, shapes, 'train_cfg.max_iters=4', *opts)
    train(part, shapes, 'train_cfg.max_iters=9', *opts, resume=True)
    a, b = knn_rows(full), knn_rows(part)
    assert [r['iter'] for r in b] == [3, 6, 9] == [r['iter'] for r in a]
    for ra, rb in zip(a, b):
        assert (rb['top1'], rb['top5']) == (ra['top1'], ra['top5'])
        assert rb['num_train'] == 16 and rb['num_val'] == 8


def test_two_processes_equal_one(tmp_path, shapes):
    """tools/dist_train.sh CFG 2 (gloo): ranks extract unequal shares (17
    val images, batch 4: 9 / 8 images, 3 / 2 batches; 11 train images:
    6 / 5) without waiting on each other, and the numbers equal one
    process on the same weights (lr 0, so the weights stay the seeded
    initial ones)."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    opts = ['optim_wrapper.optimizer.lr=0', 'train_cfg.max_iters=2',
            'custom_hooks.0.val_subset=17', 'custom_hooks.0.train_subset=11',
            'custom_hooks.0.batch_size=4']
    train(one, shapes, *opts)
    run_tool(['bash', 'tools/dist_train.sh', CFG, '2', '--work-dir',
              str(two), '--cfg-options', *data_opts(shapes), *opts],
             env=dict(ENV, PORT=str(free_port())))
    a, b = knn_rows(one), knn_rows(two)
    assert len(a) == len(b) == 1
    assert (a[0]['world_size'], b[0]['world_size']) == (1, 2)
    for key in ('top1', 'top5', 'num_train', 'num_val'):
        assert a[0][key] == b[0][key], (a, b)


TINY = [('tests/configs/watch_um_mae.py', 64),
        ('tests/configs/rel_green_mim.py', 128),  # window 4 at stage 4
        ('tests/configs/tiny_vitfreeze.py', 64)]
FULL = ['configs/um_mae/swin_t_200e.py', 'configs/um_mae/pvt_s_200e.py',
        'configs/um_mae/vit_b_200e.py', 'configs/green_mim/swin_b_800e.py',
        'configs/vitfreeze/vit_b_100e.py', 'configs/vitfreeze/swin_t_100e.py',
        'configs/simmim/swin_t_256_200e.py',
        'mmpretrain::mae/mae_vit-base-p16_8xb512-amp-coslr-300e_in1k.py',
        'mmpretrain::simmim/'
        'simmim_swin-base-w6_8xb256-amp-coslr-100e_in1k-192px.py']


def evaluate_config(cfg_path, root, tmp_path, img_size):
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope

    from mmum.engine.hooks import KNNEvalHook
    if cfg_path.startswith('mmpretrain::'):
        (tmp_path / 'cfg.py').write_text(f'_base_ = {cfg_path!r}\n')
        cfg_path = str(tmp_path / 'cfg.py')
    cfg = Config.fromfile(osp.join(osp.dirname(__file__), '..', cfg_path))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.train()
    hook = KNNEvalHook(**datasets(root), img_size=img_size, batch_size=4,
                       num_workers=0, train_subset=8, val_subset=4)
    result = hook.evaluate(model)
    assert set(result) == {'top1', 'top5'}
    assert 0 <= result['top1'] <= 100 and model.training


@pytest.mark.parametrize('cfg, size', TINY)
def test_every_encoder_tiny(cfg, size, shapes, tmp_path):
    """UM-MAE Swin, GreenMIM Swin, LocalMIM ViT (tiny): the dense path."""
    evaluate_config(cfg, shapes, tmp_path, size)


@pytest.mark.slow  # full-size models on CPU: ~2 min
@pytest.mark.parametrize('cfg', FULL)
def test_every_encoder_full_size(cfg, shapes, tmp_path):
    """Every pre-training config's encoder (UM-MAE Swin/PVT/ViT, GreenMIM
    Swin, LocalMIM ViT/Swin, SimMIM) and mmpretrain's own MAE and SimMIM
    models, at the configs' usual 224 px (192 for mmpretrain's SimMIM)."""
    evaluate_config(cfg, shapes, tmp_path, 192 if 'simmim_' in cfg else 224)


WATCHED = {  # config -> hooks once its "Watching the run" block is on
    'configs/um_mae/swin_t_200e.py': 2, 'configs/um_mae/vit_b_200e.py': 2,
    'configs/green_mim/swin_b_800e.py': 2,
    'configs/vitfreeze/local_mim_vit_b_100e.py': 2,
    'configs/vitfreeze/vit_b_100e.py': 2,
    'configs/vitfreeze/swin_t_100e.py': 2,
    # inherit the block of their base
    'configs/um_mae/pvt_s_200e.py': 2, 'configs/um_mae/swin_l_800e.py': 2,
    'configs/green_mim/swin_l_800e.py': 2,
}
# the block the configs on mmum's pre-training runtime share
RUNTIME = 'configs/_base_/default_runtime.py'


def test_config_blocks_uncommented_build(tmp_path):
    """Every pre-training config carries (or inherits from
    configs/_base_/default_runtime.py) a commented-out block with both
    hooks; uncommented (in a copy) it parses and the hooks build."""
    import shutil

    from mmengine.config import Config

    from mmum.engine.hooks import KNNEvalHook, ReconstructionHook
    from mmum.registry import HOOKS
    root = osp.join(osp.dirname(__file__), '..')
    shutil.copytree(osp.join(root, 'configs'), tmp_path / 'configs')
    for path in [*WATCHED, RUNTIME]:
        text = (tmp_path / path).read_text()
        if '# custom_hooks += [' in text:
            head, block = text.split('# custom_hooks += [')
            block = '\n'.join(line[2:] for line in block.splitlines())
            (tmp_path / path).write_text(f'{head}custom_hooks += [{block}\n')
    for path, n in WATCHED.items():
        hooks = Config.fromfile(str(tmp_path / path)).custom_hooks
        watch = [h for h in hooks if h['type'] in (
            'mmum.KNNEvalHook', 'mmum.ReconstructionHook')]
        assert len(watch) == n, path
        built = [type(HOOKS.build(h)) for h in watch]
        assert built == [KNNEvalHook, ReconstructionHook][:n]
        assert 'mmum.NaNGuardHook' in [h['type'] for h in hooks]


def test_resume_by_epoch(tmp_path, shapes):
    """Epoch-based training (as the pre-training configs): evaluation and
    picture every epoch; stopped after epoch 2 and resumed to 3, each epoch
    is evaluated once."""
    base = osp.join(osp.dirname(osp.abspath(__file__)), 'configs',
                    'watch_um_mae.py')
    cfg = tmp_path / 'epochs.py'
    cfg.write_text(
        f'_base_ = {base!r}\n'
        "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop',\n"
        "                 max_epochs=3)\n"
        "train_dataloader = dict(sampler=dict(type='DefaultSampler',\n"
        "                                     shuffle=True))\n"
        "default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))\n"
        "log_processor = dict(by_epoch=True)\n")
    opts = ('custom_hooks.0.by_epoch=True', 'custom_hooks.0.interval=1',
            'custom_hooks.0.train_subset=16', 'custom_hooks.0.val_subset=8',
            'custom_hooks.1.by_epoch=True', 'custom_hooks.1.interval=1',
            'custom_hooks.1.num_images=1')
    work = tmp_path / 'work'
    train(work, shapes, 'train_cfg.max_epochs=2', *opts, cfg=str(cfg))
    train(work, shapes, *opts, cfg=str(cfg), resume=True)
    rows = knn_rows(work)
    # 48 images, batch 8: 6 iterations per epoch
    assert [(r['epoch'], r['iter']) for r in rows] == [(1, 6), (2, 12),
                                                       (3, 18)]
    assert sorted(os.listdir(work / 'reconstructions')) == [
        'epoch_0001.png', 'epoch_0002.png', 'epoch_0003.png']
