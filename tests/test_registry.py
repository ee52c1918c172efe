"""One registry scope: mmum components are reachable from mmpretrain, mmdet
and mmseg configs as ``type='mmum.X'`` via ``custom_imports``."""
import importlib

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.utils import import_modules_from_strings

import mmum
from mmum.registry import MODELS, TRANSFORMS
from mmum.utils import register_all_modules

TOOLBOX_REGISTRIES = {
    'mmpretrain': 'mmpretrain.registry',
    'mmdet': 'mmdet.registry',
    'mmseg': 'mmseg.registry',
}
# a transform each toolbox registers itself, reached by its bare name
OWN_PACKER = {
    'mmpretrain': 'PackInputs',
    'mmdet': 'PackDetInputs',
    'mmseg': 'PackSegInputs',
}


@pytest.fixture(autouse=True)
def restore_default_scope():
    """Drop the DefaultScope instances a test creates (they are global)."""
    before = set(DefaultScope._instance_dict)
    yield
    for name in set(DefaultScope._instance_dict) - before:
        del DefaultScope._instance_dict[name]


def _cfg(scope):
    return Config(
        dict(
            default_scope=scope,
            custom_imports=dict(imports=['mmum'], allow_failed_imports=False),
            transform=dict(type='mmum.UniformMasking'),
            pipeline=[
                dict(type='mmum.UniformMasking'),
                dict(type=OWN_PACKER[scope]),  # toolbox's own, bare name
            ]))


@pytest.mark.parametrize('scope', list(TOOLBOX_REGISTRIES))
def test_build_mmum_transform_from_toolbox_config(scope):
    cfg = _cfg(scope)
    # what the Runner does with these two fields
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)
    assert DefaultScope.get_current_instance().scope_name == scope
    registry = importlib.import_module(TOOLBOX_REGISTRIES[scope]).TRANSFORMS

    t = registry.build(cfg.transform)
    assert type(t) is TRANSFORMS.get('UniformMasking')
    assert type(t).__module__.startswith('mmum.')

    built = [registry.build(c) for c in cfg.pipeline]
    # the bare name resolves in the toolbox's own scope, mmum.X in mmum's
    assert type(built[0]) is type(t)
    assert type(built[1]).__module__.startswith(scope + '.')


@pytest.mark.parametrize('scope', list(TOOLBOX_REGISTRIES))
def test_mmum_model_reachable_from_toolbox_models(scope):
    if not MODELS.module_dict:
        pytest.skip('no mmum model registered yet')
    init_default_scope(scope)
    registry = importlib.import_module(TOOLBOX_REGISTRIES[scope]).MODELS
    name = next(iter(MODELS.module_dict))
    assert registry.get(f'mmum.{name}') is MODELS.get(name)


def test_registry_nodes_are_children_of_mmengine_roots():
    from mmengine import registry as root
    for name in ('MODELS', 'TRANSFORMS', 'DATASETS', 'HOOKS',
                 'PARAM_SCHEDULERS', 'OPTIM_WRAPPER_CONSTRUCTORS',
                 'VISUALIZERS'):
        node = getattr(mmum.registry, name)
        assert node.scope == 'mmum'
        assert node.parent is getattr(root, name)
        assert node.parent.children['mmum'] is node


def test_register_all_modules_sets_scope():
    register_all_modules(init_default_scope=False)
    assert 'UniformMasking' in TRANSFORMS.module_dict

    DefaultScope.get_instance('test-none-scope', scope_name='mmpretrain')
    with pytest.warns(UserWarning, match='switches it to "mmum"'):
        register_all_modules()
    assert DefaultScope.get_current_instance().scope_name == 'mmum'
    # with mmum as default scope a bare name finds the mmum component
    t = TRANSFORMS.build(dict(type='UniformMasking'))
    assert type(t) is TRANSFORMS.get('UniformMasking')

    register_all_modules()  # idempotent, no warning when already mmum
    assert DefaultScope.get_current_instance().scope_name == 'mmum'


def test_unknown_mmum_type_is_a_clear_error():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import TRANSFORMS as PRETRAIN_TRANSFORMS
    with pytest.raises(KeyError, match='NoSuchThing'):
        PRETRAIN_TRANSFORMS.build(dict(type='mmum.NoSuchThing'))
