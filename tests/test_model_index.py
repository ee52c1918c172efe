"""model-index.yml and the metafiles it imports follow OpenMMLab's schema
(the one `mim` and mmpretrain's model index read): every collection has a
name, metadata, paper (title and URL), README and code; every model names
its collection, a config that exists, metadata and results from the paper
with the table they come from; and every config in configs/ is indexed."""
import glob
import os.path as osp

import pytest
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load(rel):
    with open(osp.join(ROOT, rel)) as f:
        return yaml.safe_load(f)


INDEX = load('model-index.yml')
METAFILES = INDEX['Import']
COLLECTIONS = [c for m in METAFILES for c in load(m).get('Collections', [])]
MODELS = [(m, model) for m in METAFILES for model in load(m)['Models']]


def test_index_imports_every_metafile():
    on_disk = sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))
    assert sorted(METAFILES) == on_disk
    assert COLLECTIONS and MODELS


@pytest.mark.parametrize('coll', COLLECTIONS, ids=lambda c: c['Name'])
def test_collection_fields(coll):
    for key in ('Name', 'Metadata', 'Paper', 'README', 'Code'):
        assert coll.get(key), f'collection {coll.get("Name")} lacks {key}'
    assert coll['Paper']['Title'] and coll['Paper']['URL'].startswith(
        'https://arxiv.org/abs/')
    assert osp.isfile(osp.join(ROOT, coll['README']))
    assert osp.isfile(osp.join(ROOT, coll['Code']['URL']))
    assert coll['Metadata']['Training Data']


def test_names_unique_and_collections_known():
    names = [model['Name'] for _, model in MODELS]
    assert len(names) == len(set(names))
    known = {c['Name'] for c in COLLECTIONS}
    for meta, model in MODELS:
        assert model['In Collection'] in known, (meta, model['Name'])
        for down in model.get('Downstream', []):
            assert down in names, f'{model["Name"]}: unknown {down}'


@pytest.mark.parametrize(
    'meta,model', MODELS, ids=[m['Name'] for _, m in MODELS])
def test_model_fields(meta, model):
    for key in ('Name', 'In Collection', 'Config', 'Metadata'):
        assert model.get(key), f'{meta}: {model.get("Name")} lacks {key}'
    assert 'Results' in model and 'Weights' in model
    assert osp.isfile(osp.join(ROOT, model['Config'])), model['Config']
    assert model['Metadata'].get('Training Data')
    if model['Results'] is not None:
        # numbers come from a paper: say from which table
        assert 'Table' in model.get('Results From', ''), model['Name']
        for result in model['Results']:
            assert result['Task'] and result['Dataset']
            assert result['Metrics'] and all(
                isinstance(v, (int, float))
                for v in result['Metrics'].values())
    # mmum publishes no weights; the authors' own are marked as theirs
    assert model['Weights'] is None
    theirs = model.get("Authors' Weights")
    if theirs is not None:
        assert theirs['URL'].startswith('https://')
        assert 'authors' in theirs['From']


def test_every_config_is_indexed():
    indexed = {model['Config'] for _, model in MODELS}
    configs = {
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))
        if '/_base_/' not in p}
    assert configs - indexed == set()
