"""Drop a decoder once the encoder layer feeding it is frozen (ViTFreeze)."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmum.engine.schedulers.freezeout import freeze_params
from mmum.registry import HOOKS


@HOOKS.register_module()
class DecoderPruningHook(Hook):
    """Prune decoders whose input layer is frozen, e.g. by FreezeOutLR.

    A pruned decoder and its target leave the forward pass, and its
    parameters leave the optimizer (state freed, ``requires_grad=False``).
    The pruned set is written to ``checkpoint['meta']['pruned_decoders']``
    and restored on resume before the optimizer state is loaded. A pruned
    decoder's loss leaves the log too: its smoothed value is dropped from
    the message hub (also after a resume), using the model's
    ``decoder_loss_keys`` (decoder -> loss name, if it has them; kept in
    ``checkpoint['meta']['decoder_loss_keys']``).

    The model (unwrapped) must provide ``decoder_layers`` (the layer feeding
    each decoder, in ``get_layer_depth`` order), ``num_frozen_layers()``,
    ``pruned_decoders`` and ``prune_decoder(k)`` -- see :class:`mmum.LocalMIM`.
    """

    # after ParamSchedulerHook (LOW), which freezes layers in the same stage
    priority = 'VERY_LOW'
    API = ('decoder_layers', 'num_frozen_layers', 'pruned_decoders',
           'prune_decoder')

    def __init__(self):
        self._loss_keys = {}  # decoder -> loss name, seen in training

    def _model(self, runner):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        missing = [a for a in self.API if not hasattr(model, a)]
        if missing:
            raise TypeError(f'DecoderPruningHook: {type(model).__name__} '
                            f'lacks {missing}; use a model with prunable '
                            'decoders such as mmum.LocalMIM')
        return model

    def _prune(self, runner, model, decoders):
        for k in sorted(set(decoders) - model.pruned_decoders):
            freeze_params(runner.optim_wrapper, model.prune_decoder(k))
            runner.logger.info(f'DecoderPruningHook: pruned decoder {k} '
                               f'(fed by frozen layer '
                               f'{model.decoder_layers[k]})')

    def _sync(self, runner):
        model = self._model(runner)
        frozen = model.num_frozen_layers()
        self._prune(runner, model, [
            k for k, layer in enumerate(model.decoder_layers)
            if layer < frozen
        ])
        self._forget_losses(runner, model)

    def _forget_losses(self, runner, model):
        """Drop pruned decoders' losses from the message hub, so the log
        stops printing their last smoothed value."""
        self._loss_keys.update(getattr(model, 'decoder_loss_keys', {}))
        hub = getattr(runner, 'message_hub', None)
        for k in model.pruned_decoders:
            if k in self._loss_keys and hub is not None:
                hub.log_scalars.pop(f'train/{self._loss_keys[k]}', None)

    def before_train(self, runner):
        self._sync(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._sync(runner)

    def after_train_epoch(self, runner):
        self._sync(runner)

    def before_save_checkpoint(self, runner, checkpoint):
        meta = checkpoint.setdefault('meta', {})
        meta['pruned_decoders'] = sorted(self._model(runner).pruned_decoders)
        meta['decoder_loss_keys'] = dict(self._loss_keys)

    def after_load_checkpoint(self, runner, checkpoint):
        # only a resume restores the schedule; `load_from` loads weights only
        if getattr(runner, '_resume', False):
            meta = checkpoint.get('meta', {})
            self._loss_keys.update(meta.get('decoder_loss_keys', {}))
            self._prune(runner, self._model(runner),
                        meta.get('pruned_decoders', []))
