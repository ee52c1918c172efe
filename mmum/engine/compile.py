"""``compile=True`` that works: ``torch.compile`` of the model's loss.

mmengine 0.10.7 reads the config key ``compile`` (``True`` or a dict of
:func:`torch.compile` arguments) in ``Runner.train`` and compiles the
model's whole ``train_step``: data preprocessor, loss and optimizer step.
With torch 2.14 that fails for mmum's pre-training configs: UM-MAE in the
data preprocessor (``'ndarray' object has no attribute 'to'``), ViTFreeze in
the optimizer step (``'UserDefinedDictVariable' object has no attribute
'items'`` in ``torch/optim/adam.py``, with mmpretrain's layer-decay
constructor).

``import mmum`` (every mmum config imports it) therefore makes the same key
compile only what is worth compiling: the model's ``loss`` method, i.e. the
algorithm's forward and loss (encoder, decoder, target, loss), on the model
inside any DDP wrapper. The data preprocessor, the loss parsing, the
backward call, the optimizer step, the hooks and the logging stay eager, as
they run outside ``loss``. The backward of the compiled region is compiled
too (AOTAutograd).

Graphs: UM-MAE, SimMIM, LocalMIM and ViTFreeze compile their loss as one
graph (no graph break) and do not recompile for new masks of the same batch
shape. Expected recompilations: a new batch size (e.g. a short last batch;
the second size makes the batch dimension dynamic) and, with FreezeOut,
each change of the frozen prefix or the pruned decoders (one graph per
freezing state, at most one per layer; the recompile limit is raised to
allow that many). ``compile=dict(backend='eager')`` traces without
generating code (a quick check that a model compiles).
"""
from typing import Union

import torch
import torch._dynamo
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

_mmengine_maybe_compile = Runner._maybe_compile


def compile_loss(model: torch.nn.Module, compile_cfg: Union[bool, dict]
                 ) -> torch.nn.Module:
    """Replace ``model.loss`` (of the module inside a DDP wrapper) by its
    :func:`torch.compile`-d version.

    Args:
        model (nn.Module): An mmengine ``BaseModel`` with a ``loss(inputs,
            data_samples)`` method (every mmum and mmpretrain algorithm),
            possibly wrapped (``MMDistributedDataParallel``).
        compile_cfg (bool | dict): ``True`` for :func:`torch.compile`'s
            defaults, or its keyword arguments (``backend``, ``mode``,
            ``dynamic``, ``fullgraph``, ``options``).
    Returns:
        nn.Module: the module whose ``loss`` was compiled.
    Raises:
        TypeError: ``compile_cfg`` is not a bool or dict, or the model has
            no ``loss`` method.
    """
    if compile_cfg is True:
        compile_cfg = {}
    if not isinstance(compile_cfg, dict):
        raise TypeError(
            f'compile must be True, False or a dict of torch.compile '
            f'arguments (e.g. dict(backend="inductor", mode="max-autotune"))'
            f', got {compile_cfg!r}')
    module = model.module if is_model_wrapper(model) else model
    if not callable(getattr(module, 'loss', None)):
        raise TypeError(
            f'compile=True compiles the model\'s loss(inputs, data_samples) '
            f'method; {type(module).__name__} has none')
    # FreezeOut: one graph per freezing state (layers + decoders + 1)
    if hasattr(module, 'num_frozen_layers'):  # LocalMIM / ViTFreeze
        states = len(module.backbone.layer_params()) + len(module.neck) + 1
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, states)
    module.loss = torch.compile(module.loss, **compile_cfg)
    return module


def _maybe_compile(self: Runner, target: str) -> None:
    """``Runner._maybe_compile`` for ``train_step``: compile the model's loss
    (the optimizer step stays eager); other targets as mmengine does."""
    compile_cfg = self.cfg.get('compile', None)
    if target != 'train_step' or compile_cfg is None or compile_cfg is False:
        return _mmengine_maybe_compile(self, target)
    module = compile_loss(self.model, compile_cfg)
    self.logger.info(
        f'compile: {type(module).__name__}.loss is compiled with '
        f'torch.compile({compile_cfg if compile_cfg is not True else ""}); '
        'the optimizer step and the hooks run eagerly (mmum.engine.compile: '
        "mmengine's compile of the whole train_step fails on this torch). "
        'The first iterations are slow while it compiles.')


Runner._maybe_compile = _maybe_compile
