"""Test-only hook, imported into ``tools/dist_train.sh`` runs through
``custom_imports``: records the masks every rank trains on and writes them to
``<work_dir>/masks_rank<r>.pt`` when training ends."""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class MaskProbeHook(Hook):

    def before_train(self, runner):
        self.masks = []
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if hasattr(model, 'random_mask'):  # GreenMIM: one mask per batch
            draw = model.random_mask

            def recording(inputs):
                mask = draw(inputs)
                self.masks.append(mask.detach().cpu().clone())
                return mask

            model.random_mask = recording

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        samples = (data_batch or {}).get('data_samples', [])
        if samples and 'mask' in samples[0]:  # UM-MAE: per-sample masks
            self.masks.append(torch.stack([s.mask for s in samples]))

    def after_train(self, runner):
        torch.save(self.masks,
                   osp.join(runner.work_dir, f'masks_rank{runner.rank}.pt'))
