def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: heavy test, excluded from the default run (-m \"not slow\")")


# --- tools: keep mmengine's global DefaultScope from leaking between tests ---
import collections  # noqa: E402

import pytest  # noqa: E402


def _scope_guard():
    from mmengine.registry import DefaultScope
    before = collections.OrderedDict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = before


# mmengine's DefaultScope is process-global. A Runner built in one test or
# module fixture (scope 'mmengine' when its config sets no ``default_scope``)
# would change how bare type names resolve in every later test, so each test
# and each module gets back the scopes it started with.
_restore_default_scope = pytest.fixture(autouse=True)(_scope_guard)
_restore_default_scope_module = pytest.fixture(
    autouse=True, scope='module')(_scope_guard)


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module of tiny-model tests (use with
    ``pytestmark = pytest.mark.usefixtures('one_thread')``): op latency
    dominates there, and OpenMP spinning on a shared 2-core machine makes
    them several times slower with more than one thread."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
