"""Online weighted k-NN accuracy of the encoder during pre-training.

The recipe of instance discrimination (Wu et al., CVPR 2018, §3.4) as DINO
(Caron et al., ICCV 2021, §4.1 and its ``eval_knn.py``) runs it: L2-normalised
features, cosine similarity, the ``k`` = 20 nearest training features vote
for their class with weight ``exp(similarity / T)``, T = 0.07.
"""
import inspect
import json
import os.path as osp
import random
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dataset import default_collate
from mmengine.dist import all_gather, get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DATASETS, DefaultScope

from mmum.registry import HOOKS


def default_knn_pipeline(img_size: int = 224) -> List[dict]:
    """Resize the short edge to ``img_size * 8 / 7`` and centre-crop
    ``img_size`` (the usual ImageNet test transform). An image that cannot
    be loaded is left out with a warning naming it, as in training."""
    return [
        dict(type='mmum.SafeLoadImageFromFile', on_error='skip'),
        dict(type='ResizeEdge', scale=img_size * 8 // 7, edge='short',
             backend='pillow', interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=img_size),
        dict(type='PackInputs'),
    ]


def pool_features(out, out_index: int = -1,
                  num_extra_tokens: int = 0) -> torch.Tensor:
    """Global average of one backbone output, L2-normalised: (B, C).

    Args:
        out: a backbone's output, a tuple of per-stage outputs or a tensor.
            A stage output is a map (B, C, H, W) (Swin, PVT), a token
            sequence (B, num_extra_tokens + L, C) (ViT ``out_type='raw'``;
            the extra class tokens are left out of the average) or an
            already pooled (B, C).
        out_index (int): which entry of the tuple.
    """
    if isinstance(out, (tuple, list)):
        if not -len(out) <= out_index < len(out):
            raise IndexError(f'KNNEvalHook: out_index={out_index} but the '
                             f'backbone returns {len(out)} outputs')
        out = out[out_index]
    if out.dim() == 4:
        feat = out.mean((2, 3))
    elif out.dim() == 3:
        feat = out[:, num_extra_tokens:].mean(1)
    elif out.dim() == 2:
        feat = out
    else:
        raise ValueError('KNNEvalHook: expected a (B, C, H, W), (B, L, C) or '
                         f'(B, C) backbone output, got {tuple(out.shape)}')
    return F.normalize(feat.float(), dim=1)


def dense_backbone_forward(backbone, inputs: torch.Tensor):
    """The backbone's unmasked forward: ``backbone(x, mask=None)`` for the
    MIM encoders that take a mask (mmum's UM-MAE, GreenMIM, LocalMIM and
    mmpretrain's MAE / SimMIM encoders), else ``backbone(x)``."""
    if 'mask' in inspect.signature(backbone.forward).parameters:
        return backbone(inputs, mask=None)
    return backbone(inputs)


@torch.no_grad()
def weighted_knn(train_feats: torch.Tensor, train_labels: torch.Tensor,
                 val_feats: torch.Tensor, val_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07,
                 topk: Sequence[int] = (1, 5), chunk: int = 256
                 ) -> Dict[str, float]:
    """Weighted k-NN classification accuracy in percent.

    Args:
        train_feats (Tensor): (N, C) L2-normalised.
        train_labels (Tensor): (N,) int class indices.
        val_feats (Tensor): (M, C) L2-normalised.
        val_labels (Tensor): (M,).
        k (int): neighbours; ``min(k, N)`` are used.
        temperature (float): > 0; a neighbour votes ``exp(cos / T)``.
        topk: accuracies to report, e.g. (1, 5); a ``t`` >= the number of
            classes gives 100.
        chunk (int): queries per similarity block (bounds memory).
    Returns:
        dict: ``{'top1': float, 'top5': float}`` for ``topk=(1, 5)``.
    """
    if len(train_feats) == 0 or len(val_feats) == 0:
        raise ValueError('weighted_knn: empty train or val features')
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    k = min(k, len(train_feats))
    hits = {t: 0 for t in topk}
    for s in range(0, len(val_feats), chunk):
        sim = val_feats[s:s + chunk] @ train_feats.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx],
                           (top_sim / temperature).exp())
        order = votes.argsort(dim=1, descending=True, stable=True)
        correct = order == val_labels[s:s + chunk, None]  # (m, classes)
        for t in topk:
            hits[t] += int(correct[:, :t].any(1).sum())
    return {f'top{t}': 100.0 * hits[t] / len(val_feats) for t in topk}


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (ranks may hold different numbers of
    rows): each rank pads to the largest count for ``all_gather``, then the
    padding is cut off."""
    if get_dist_info()[1] == 1:
        return x
    n = torch.tensor([len(x)], device=x.device)
    counts = [int(c) for c in all_gather(n)]
    pad = x.new_zeros((max(counts) - len(x), *x.shape[1:]))
    parts = all_gather(torch.cat([x, pad]))
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _Loaded(torch.utils.data.Dataset):
    """``(index, sample)`` of ``indices`` of a dataset, the sample ``None``
    when its pipeline skipped it (an unreadable image), instead of the
    random other sample ``BaseDataset.__getitem__`` would fetch."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        idx = self.indices[i]
        return idx, self.dataset.prepare_data(idx)


def _collate_loaded(batch):
    """(indices, collated samples) of the loaded samples, or None."""
    kept = [(i, s) for i, s in batch if s is not None]
    if not kept:
        return None
    return [i for i, _ in kept], default_collate([s for _, s in kept])


@HOOKS.register_module()
class KNNEvalHook(Hook):
    """Weighted k-NN top-1 / top-5 of the encoder's features, every
    ``interval`` epochs (``by_epoch``) or iterations.

    Features of a fixed labelled subset of ``train_dataset`` (the memory
    bank) and of ``val_dataset`` (the queries) go through the hook's own
    test ``pipeline``, the model's data preprocessor and
    ``backbone(x, mask=None)`` (the dense, unmasked path of every mmum and
    mmpretrain MIM encoder) with the model in eval mode under ``no_grad``;
    the feature is the global average of output ``out_index``,
    L2-normalised. Each rank extracts its own share (its shares may differ
    in size); the features are gathered and every rank computes the same
    numbers, so no rank waits on another. Afterwards every module gets back
    its own train/eval mode (frozen FreezeOut layers stay in eval), and the
    RNG states are those before the evaluation, so training goes on exactly
    as without the hook.

    The numbers are written to the ``MessageHub`` (``knn/top1``,
    ``knn/top5``, ``knn/time`` in seconds; ``knn`` is ``prefix``), to the
    Visualizer's backends
    (``add_scalars`` at the current iteration: TensorBoard, W&B,
    ``vis_data/scalars.json``), to the log, and (rank 0) appended to
    ``<work_dir>/knn_eval.jsonl``. The schedule follows the runner's
    epoch/iteration counter, so a resumed run evaluates neither twice nor
    skips one.

    Args:
        train_dataset (dict): mmpretrain dataset config with labels, e.g.
            ``dict(type='ImageNet', data_root='data/imagenet',
            split='train')`` or ``dict(type='CustomDataset', data_root=...,
            ann_file=..., data_prefix=...)``. Its ``pipeline`` is replaced by
            ``pipeline``.
        val_dataset (dict): The same for the queries.
        interval (int): Evaluate every ``interval`` epochs / iterations.
        by_epoch (bool): Count epochs (True) or iterations.
        train_subset (int, optional): Use this many training images (a fixed
            random subset, ``seed``); None = all.
        val_subset (int, optional): The same for the val images.
        batch_size (int): Images per forward on each rank.
        num_workers (int): Data loading workers.
        k (int): Neighbours. Defaults to 20.
        temperature (float): Vote temperature. Defaults to 0.07.
        out_index (int): Which backbone output to pool. Defaults to -1 (the
            last stage).
        img_size (int): Centre-crop size of the default pipeline.
        pipeline (list[dict], optional): Test pipeline; defaults to
            :func:`default_knn_pipeline` (``img_size``). Images its first
            step cannot load (``mmum.SafeLoadImageFromFile`` with
            ``on_error='skip'``, as the default and the pre-training
            configs) are left out of the bank / queries.
        seed (int): Seed of the subset choice.
        prefix (str): Name of the scalars (``<prefix>/top1``) and of the
            file (``<prefix>_eval.jsonl``), to run several of these hooks.
    """

    priority = 'NORMAL'

    def __init__(self,
                 train_dataset: dict,
                 val_dataset: dict,
                 interval: int = 1,
                 by_epoch: bool = True,
                 train_subset: Optional[int] = None,
                 val_subset: Optional[int] = None,
                 batch_size: int = 64,
                 num_workers: int = 2,
                 k: int = 20,
                 temperature: float = 0.07,
                 out_index: int = -1,
                 img_size: int = 224,
                 pipeline: Optional[List[dict]] = None,
                 seed: int = 0,
                 prefix: str = 'knn'):
        for name, v in (('interval', interval), ('batch_size', batch_size),
                        ('k', k)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f'KNNEvalHook: {name} must be a positive '
                                 f'integer, got {v!r}')
        for name, v in (('train_subset', train_subset),
                        ('val_subset', val_subset)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f'KNNEvalHook: {name} must be None (all) or '
                                 f'a positive integer, got {v!r}')
        if not temperature > 0:
            raise ValueError('KNNEvalHook: temperature must be > 0, got '
                             f'{temperature!r}')
        for name, v in (('train_dataset', train_dataset),
                        ('val_dataset', val_dataset)):
            if not isinstance(v, dict) or 'type' not in v:
                raise TypeError(f'KNNEvalHook: {name} must be a dataset '
                                f'config dict with a type, got {v!r}')
        self.dataset_cfgs = dict(train=train_dataset, val=val_dataset)
        self.subsets = dict(train=train_subset, val=val_subset)
        self.interval = interval
        self.by_epoch = by_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.k = k
        self.temperature = temperature
        self.out_index = out_index
        self.pipeline = pipeline or default_knn_pipeline(img_size)
        self.seed = seed
        self.prefix = prefix
        self.datasets = None

    # ------------------------------------------------------------ schedule
    def before_train(self, runner) -> None:
        self.datasets = {
            split: self.build_dataset(cfg)
            for split, cfg in self.dataset_cfgs.items()
        }
        self.indices = {
            split: self.subset_indices(len(ds), self.subsets[split])
            for split, ds in self.datasets.items()
        }

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch and self.every_n_train_iters(
                runner, self.interval):
            self.evaluate_runner(runner)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self.evaluate_runner(runner)

    # ---------------------------------------------------------------- data
    def build_dataset(self, cfg: dict):
        cfg = dict(cfg, pipeline=self.pipeline)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            ds = DATASETS.build(cfg)
        if len(ds) == 0:
            raise ValueError(f'KNNEvalHook: dataset {cfg} is empty')
        return ds

    def subset_indices(self, n: int, size: Optional[int]) -> List[int]:
        """Fixed (seeded, sorted) subset of ``range(n)``."""
        if size is None or size >= n:
            return list(range(n))
        rng = np.random.default_rng(self.seed)
        return sorted(rng.choice(n, size, replace=False).tolist())

    # ---------------------------------------------------------- evaluation
    def evaluate_runner(self, runner) -> Dict[str, float]:
        if self.datasets is None:
            self.before_train(runner)
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        t0 = time.perf_counter()
        result = self.evaluate(model)
        result['time'] = time.perf_counter() - t0
        for key, v in result.items():
            runner.message_hub.update_scalar(f'{self.prefix}/{key}', v)
        # epochs / iterations done (the loop counts the current one after
        # the hooks)
        epoch = runner.epoch + int(self.by_epoch)
        it = runner.iter + int(not self.by_epoch)
        runner.visualizer.add_scalars(
            {f'{self.prefix}/{key}': v for key, v in result.items()},
            step=it)
        n_train, n_val = len(self.indices['train']), len(self.indices['val'])
        runner.logger.info(
            f'{self.prefix}: k-NN (k={self.k}, T={self.temperature}) on '
            f'{n_train} train / {n_val} val images at epoch {epoch}, '
            f"iter {it}: top-1 {result['top1']:.2f}, top-5 "
            f"{result['top5']:.2f} "
            f"({result['time']:.1f} s)")
        if is_main_process():
            row = dict(epoch=epoch, iter=it, num_train=n_train,
                       num_val=n_val, world_size=get_dist_info()[1],
                       **result)
            path = osp.join(runner.work_dir, f'{self.prefix}_eval.jsonl')
            with open(path, 'a') as f:
                f.write(json.dumps(row) + '\n')
        return result

    @torch.no_grad()
    def evaluate(self, model) -> Dict[str, float]:
        """k-NN top-1/top-5 (percent) of ``model`` (unwrapped); builds the
        datasets on first use."""
        if self.datasets is None:
            self.before_train(None)
        modes = [(m, m.training) for m in model.modules()]
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [torch.cuda.current_device()] if \
            torch.cuda.is_available() and torch.cuda.is_initialized() else []
        try:
            model.eval()
            with torch.random.fork_rng(devices=devices):
                train = self.extract(model, 'train')
                val = self.extract(model, 'val')
        finally:
            for m, training in modes:
                m.training = training
            np.random.set_state(np_state)
            random.setstate(py_state)
        return weighted_knn(*train, *val, k=self.k,
                            temperature=self.temperature)

    def extract(self, model, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features (N, C), labels (N,)) of the split's subset, in subset
        order, on every rank."""
        rank, world_size = get_dist_info()
        mine = self.indices[split][rank::world_size]
        loader = torch.utils.data.DataLoader(
            _Loaded(self.datasets[split], mine),
            batch_size=self.batch_size, shuffle=False,
            num_workers=self.num_workers, collate_fn=_collate_loaded,
            generator=torch.Generator().manual_seed(self.seed))
        backbone = model.backbone
        extra = getattr(backbone, 'num_extra_tokens', 0)
        device = next(model.parameters()).device
        feats, labels, loaded = [], [], []
        for batch in loader:
            if batch is None:  # no image of this batch could be loaded
                continue
            idx, batch = batch
            loaded += idx
            data = model.data_preprocessor(batch, False)
            out = dense_backbone_forward(backbone, data['inputs'])
            feats.append(pool_features(out, self.out_index, extra))
            labels.append(torch.cat([s.gt_label for s in data['data_samples']
                                     ]).to(device))
        if feats:
            feats, labels = torch.cat(feats), torch.cat(labels).long()
        else:  # more ranks than images: this rank has none
            dim = self.feature_dim(model, backbone, extra)
            feats = torch.zeros(0, dim, device=device)
            labels = torch.zeros(0, dtype=torch.long, device=device)
        order = torch.tensor(loaded, device=device, dtype=torch.long)
        feats, labels, order = (gather_rows(t)
                                for t in (feats, labels, order))
        keep = order.argsort()  # subset order, whatever the world size
        return feats[keep], labels[keep]

    def feature_dim(self, model, backbone, extra: int) -> int:
        """Feature width, from one image (for a rank with no images)."""
        item = self.datasets['train'][self.indices['train'][0]]
        data = model.data_preprocessor(default_collate([item]), False)
        out = dense_backbone_forward(backbone, data['inputs'])
        return pool_features(out, self.out_index, extra).shape[1]
