"""mmum's registry nodes, scope ``mmum``.

Every node is a child of the matching root registry of mmengine, so a config
written for mmpretrain, mmdet or mmseg reaches an mmum component as
``type='mmum.Name'`` once ``custom_imports=dict(imports=['mmum'])`` is set.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import \
    WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

__all__ = [
    'RUNNERS', 'LOOPS', 'HOOKS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'DATASETS',
    'DATA_SAMPLERS', 'TRANSFORMS', 'MODELS', 'MODEL_WRAPPERS',
    'WEIGHT_INITIALIZERS', 'TASK_UTILS', 'METRICS', 'EVALUATOR',
    'VISUALIZERS', 'VISBACKENDS'
]


def _node(name, parent, location):
    return Registry(name, parent=parent, scope='mmum', locations=[location])


RUNNERS = _node('runner', MMENGINE_RUNNERS, 'mmum.engine')
LOOPS = _node('loop', MMENGINE_LOOPS, 'mmum.engine')
HOOKS = _node('hook', MMENGINE_HOOKS, 'mmum.engine')
OPTIMIZERS = _node('optimizer', MMENGINE_OPTIMIZERS, 'mmum.engine')
OPTIM_WRAPPERS = _node('optim wrapper', MMENGINE_OPTIM_WRAPPERS, 'mmum.engine')
OPTIM_WRAPPER_CONSTRUCTORS = _node('optimizer wrapper constructor',
                                   MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                   'mmum.engine')
PARAM_SCHEDULERS = _node('parameter scheduler', MMENGINE_PARAM_SCHEDULERS,
                         'mmum.engine')
DATASETS = _node('dataset', MMENGINE_DATASETS, 'mmum.datasets')
DATA_SAMPLERS = _node('data sampler', MMENGINE_DATA_SAMPLERS, 'mmum.datasets')
TRANSFORMS = _node('transform', MMENGINE_TRANSFORMS, 'mmum.datasets')
MODELS = _node('model', MMENGINE_MODELS, 'mmum.models')
MODEL_WRAPPERS = _node('model_wrapper', MMENGINE_MODEL_WRAPPERS, 'mmum.models')
WEIGHT_INITIALIZERS = _node('weight initializer',
                            MMENGINE_WEIGHT_INITIALIZERS, 'mmum.models')
TASK_UTILS = _node('task util', MMENGINE_TASK_UTILS, 'mmum.models')
METRICS = _node('metric', MMENGINE_METRICS, 'mmum.evaluation')
EVALUATOR = _node('evaluator', MMENGINE_EVALUATOR, 'mmum.evaluation')
VISUALIZERS = _node('visualizer', MMENGINE_VISUALIZERS, 'mmum.visualization')
VISBACKENDS = _node('vis_backend', MMENGINE_VISBACKENDS, 'mmum.visualization')
