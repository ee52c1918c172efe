from .hooks import *  # noqa: F401,F403
from .optimizers import *  # noqa: F401,F403
from .schedulers import *  # noqa: F401,F403
from . import checkpoint  # noqa: F401,E402  clearer checkpoint errors
from . import runner_fixes  # noqa: F401,E402  load_from/resume mix-ups, lr scaling
from . import compile  # noqa: F401,E402  compile=True compiles the loss
