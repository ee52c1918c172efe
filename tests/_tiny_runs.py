"""Shared helpers for the tools / compat tests: tiny real-photo image folders
and a tiny training run through ``tools/train.py`` (cached per session)."""
import os
import os.path as osp
import socket
import subprocess
import sys

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_CFG = osp.join(ROOT, 'tests', 'configs', 'tiny_cls.py')


def make_image_folder(root, classes=('a', 'b'), per_class=4, size=48, seed=0):
    """Write ``per_class`` random crops of scikit-image's bundled photos into
    ``root/<class>/*.png`` (mmpretrain ``CustomDataset`` layout)."""
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(osp.join(root, c), exist_ok=True)
        for i in range(per_class):
            img = photos[rng.integers(len(photos))]
            y = rng.integers(img.shape[0] - size)
            x = rng.integers(img.shape[1] - size)
            crop = np.ascontiguousarray(img[y:y + size, x:x + size, ::-1])
            cv2.imwrite(osp.join(root, c, f'{i}.png'), crop)
    return root


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(args, env=None, timeout=600):
    """Run a command from the repo root in a clean env (no weights_only
    override); return the CompletedProcess, raising with its output on
    failure."""
    full_env = {k: v for k, v in os.environ.items()
                if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'}
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(args)} exited with {proc.returncode}\n'
            f'--- stdout ---\n{proc.stdout[-6000:]}\n'
            f'--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


def python():
    return sys.executable


def make_imagenet_folder(root, num=8, size=288, seed=0):
    """mmpretrain's ImageNet layout with ``num`` photo crops:
    ``root/train/*.png`` and ``root/meta/train.txt`` (``name label``)."""
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'train'), exist_ok=True)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    lines = []
    for i in range(num):
        img = photos[i % len(photos)]
        y = rng.integers(img.shape[0] - size + 1)
        x = rng.integers(img.shape[1] - size + 1)
        crop = np.ascontiguousarray(img[y:y + size, x:x + size, ::-1])
        cv2.imwrite(osp.join(root, 'train', f'{i}.png'), crop)
        lines.append(f'{i}.png {i % len(photos)}\n')
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.writelines(lines)
    return root


def load_tool(name):
    """Import ``tools/<name>.py`` as a module (``tools`` is no package and
    ``test`` would clash with the standard library)."""
    import importlib.util
    mod_name = f'mmum_tools_{name}'
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            mod_name, osp.join(ROOT, 'tools', f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[mod_name] = module
    return sys.modules[mod_name]


def drop_new_default_scopes(before):
    """Forget the (global) DefaultScope instances created since ``before``
    (a set of instance names), so a Runner's scope does not leak into other
    test modules."""
    from mmengine.registry import DefaultScope
    for name in set(DefaultScope._instance_dict) - before:
        del DefaultScope._instance_dict[name]


def fit(opt, loss_fn, steps: int) -> list:
    """``steps`` optimizer steps on ``loss_fn()`` (a scalar loss); returns
    the losses (the overfit-one-batch tests)."""
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
