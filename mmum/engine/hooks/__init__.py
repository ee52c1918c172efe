__all__ = []
from .decoder_pruning import DecoderPruningHook  # noqa: E402
from .freezeout_hook import FreezeOutHook  # noqa: E402
__all__ += ['DecoderPruningHook', 'FreezeOutHook']
from .nan_guard import NaNGuardHook  # noqa: E402
from .safe_checkpoint import SafeCheckpointHook  # noqa: E402
__all__ += ['NaNGuardHook', 'SafeCheckpointHook']
from .knn_eval import KNNEvalHook  # noqa: E402
__all__ += ['KNNEvalHook']
from .reconstruction import ReconstructionHook  # noqa: E402
__all__ += ['ReconstructionHook']
