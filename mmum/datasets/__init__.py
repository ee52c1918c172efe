from .transforms import *  # noqa: F401,F403
from .image_folder import ImageFolder  # noqa: F401,E402
