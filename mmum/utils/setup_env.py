import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every mmum module so it is registered in the ``mmum`` scope.

    Args:
        init_default_scope (bool): Also make ``mmum`` the default scope, so
            that a bare ``type='Name'`` resolves in mmum first (and then in
            mmengine's root registries). Defaults to True.
    """
    import mmum.datasets  # noqa: F401
    import mmum.engine  # noqa: F401
    import mmum.models  # noqa: F401

    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None:
        DefaultScope.get_instance('mmum', scope_name='mmum')
    elif current.scope_name != 'mmum':
        warnings.warn(f'The current default scope "{current.scope_name}" is '
                      'not "mmum"; `register_all_modules` switches it to '
                      '"mmum". Pass init_default_scope=False to keep it.')
        DefaultScope.get_instance(f'mmum-{datetime.datetime.now()}',
                                  scope_name='mmum')
