"""Every config resolves to the recipe recorded in
``tests/data/config_snapshot.json`` (model, data preprocessor, optimiser,
schedule, train data loader, loop, hooks). Moving shared blocks into ``configs/_base_/`` must not
change what a config builds; a deliberate recipe change rewrites the
snapshot with ``python tools/misc/config_snapshot.py --out
tests/data/config_snapshot.json`` in the same commit."""
import importlib.util
import json
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SNAPSHOT = osp.join(ROOT, 'tests', 'data', 'config_snapshot.json')

_spec = importlib.util.spec_from_file_location(
    'config_snapshot', osp.join(ROOT, 'tools', 'misc', 'config_snapshot.py'))
snap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snap)

with open(SNAPSHOT) as f:
    RECORDED = json.load(f)


def test_snapshot_covers_every_config():
    assert sorted(RECORDED) == snap.config_paths()


@pytest.mark.parametrize('path', snap.config_paths())
def test_config_resolves_as_recorded(path):
    lines = snap.diff(RECORDED[path], snap.resolve(path), path)
    assert not lines, 'config changed:\n' + '\n'.join(lines)


def test_diff_names_the_changed_value():
    old = {'model': {'backbone': {'arch': 'tiny'}}, 'lr': [1, 2]}
    new = {'model': {'backbone': {'arch': 'base'}}, 'lr': [1, 3]}
    assert snap.diff(old, new, 'x') == [
        "x.lr[1]: 2 -> 3", "x.model.backbone.arch: 'tiny' -> 'base'"]
