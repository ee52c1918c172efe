"""Image loading that names the broken file, and can skip it."""
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log

from mmum.registry import TRANSFORMS


@TRANSFORMS.register_module()
class SafeLoadImageFromFile(LoadImageFromFile):
    """:class:`mmcv.transforms.LoadImageFromFile` with a policy for files
    that cannot be read or decoded (missing, truncated, not an image).

    - ``on_error='raise'`` (default): stop with an :class:`OSError` that names
      the file and says how to skip such files instead;
    - ``on_error='skip'``: log a warning naming the file (once per file) and
      return ``None``; mmengine's ``BaseDataset`` then draws another sample
      (up to its ``max_refetch`` times), so the epoch goes on.

    Drop-in for ``dict(type='LoadImageFromFile')`` in a pipeline::

        dict(type='mmum.SafeLoadImageFromFile', on_error='skip')

    Args:
        on_error (str): ``'raise'`` or ``'skip'``.
        **kwargs: Arguments of ``LoadImageFromFile`` (``ignore_empty`` is
            replaced by ``on_error``).
    """

    ON_ERROR = ('raise', 'skip')

    def __init__(self, on_error: str = 'raise', **kwargs):
        if on_error not in self.ON_ERROR:
            raise ValueError(f'SafeLoadImageFromFile: on_error must be one of '
                             f'{self.ON_ERROR}, got {on_error!r}')
        if 'ignore_empty' in kwargs:
            raise TypeError('SafeLoadImageFromFile: use on_error=\'skip\' '
                            'instead of ignore_empty')
        super().__init__(**kwargs)
        self.on_error = on_error
        self.skipped = set()

    def transform(self, results: dict):
        filename = results['img_path']
        try:
            out = super().transform(results)
            error = None
        except Exception as e:  # unreadable, or not decodable (assert)
            error = f'{type(e).__name__}: {e}'
        if error is None:
            return out
        if self.on_error == 'raise':
            raise OSError(
                f'cannot load image {filename!r} ({error}); a dataset file '
                f'must be a readable image (png, jpg, ...). Fix or remove it, '
                f'or skip such files with '
                f"dict(type='mmum.SafeLoadImageFromFile', on_error='skip')")
        if filename not in self.skipped:
            self.skipped.add(filename)
            print_log(f'SafeLoadImageFromFile: skipping {filename!r}, which '
                      f'cannot be loaded ({error})', logger='current',
                      level=30)
        return None

    def __repr__(self):
        return super().__repr__()[:-1] + f', on_error={self.on_error!r})'
