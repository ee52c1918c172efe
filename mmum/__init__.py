from .utils import compat  # noqa: F401  (must run before mmengine loads checkpoints)
from .version import __version__, version_info

# Importing the sub-packages registers every component in the ``mmum`` scope,
# so ``custom_imports=dict(imports=['mmum'])`` is all a config needs.
from . import datasets, engine, models  # noqa: F401,E402  isort:skip
from .utils import quiet_logs, runner_checks  # noqa: E402  isort:skip

runner_checks.install()  # what mmum adds where the Runner wraps the model
quiet_logs.install()  # the console shows the run, not every parameter

__all__ = ['__version__', 'version_info']
