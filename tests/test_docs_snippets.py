"""Every Python snippet of the docs (docs/*.md, README.md, configs/*/README.md)
runs as written.

A ```python block is one of
- a config (it assigns ``_base_``): loaded as a config file at the place the
  marker ``<!-- snippet: at PATH -->`` before the block names (default: a
  file in the repository root), so relative ``_base_`` paths resolve as a
  user's file there would; its model and custom hooks are built;
- Python code (it imports something): executed from the repository root;
- a fragment (marked ``<!-- snippet: fragment -->``, e.g. with ``...`` or
  names defined elsewhere): compiled.
An unmarked block that is none of these fails the test, so a new snippet
has to say what it is.
"""
import ast
import glob
import os.path as osp
import re

import pytest

from _tiny_runs import ROOT

BLOCK = re.compile(r'(<!-- snippet: ([^>]*?) -->\n)?```python\n(.*?)```',
                   re.S)


def snippets():
    files = sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')) +
                   glob.glob(osp.join(ROOT, 'configs', '*', 'README.md')) +
                   [osp.join(ROOT, 'README.md')])
    out = []
    for path in files:
        text = open(path).read()
        for m in BLOCK.finditer(text):
            line = text[:m.start(3)].count('\n') + 1
            out.append(pytest.param(m.group(2) or '', m.group(3),
                                    id=f'{osp.relpath(path, ROOT)}:{line}'))
    return out


def absolute_bases(code: str, location: str) -> str:
    """``code`` with its relative ``_base_`` paths made absolute for a
    config file at ``location`` (repository-relative)."""
    tree = ast.parse(code)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_'
                for t in node.targets):
            bases = ast.literal_eval(node.value)
            single = isinstance(bases, str)
            bases = [bases] if single else list(bases)
            here = osp.dirname(osp.join(ROOT, location))
            bases = [b if '::' in b or osp.isabs(b) else
                     osp.normpath(osp.join(here, b)) for b in bases]
            seg = ast.get_source_segment(code, node)
            new = f'_base_ = {bases[0]!r}' if single else f'_base_ = {bases!r}'
            return code.replace(seg, new, 1)
    raise AssertionError('no _base_ assignment')


def check_config(code, location, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope, HOOKS, MODELS

    import mmum  # noqa: F401
    path = tmp_path / osp.basename(location)
    path.write_text(absolute_bases(code, location))
    cfg = Config.fromfile(str(path))
    before = set(DefaultScope._instance_dict)
    try:
        scope = cfg.get('default_scope', 'mmum')
        with DefaultScope.overwrite_default_scope(scope):
            model_cfg = cfg.model
            bb = model_cfg.get('backbone') or {}
            if isinstance(bb.get('init_cfg'), dict):
                bb.init_cfg = None  # the docs' checkpoints are not here
            MODELS.build(model_cfg)
            for hook in cfg.get('custom_hooks', []):
                HOOKS.build(hook)
    finally:
        for name in set(DefaultScope._instance_dict) - before:
            DefaultScope._instance_dict.pop(name)


@pytest.mark.parametrize('marker,code', snippets())
def test_doc_snippet_runs(marker, code, tmp_path, monkeypatch):
    if marker == 'fragment':
        compile(code, '<snippet>', 'exec')
    elif re.search(r'^_base_\s*=', code, re.M):
        location = marker[3:].strip() if marker.startswith('at ') \
            else 'my_config.py'
        check_config(code, location, tmp_path)
    elif re.search(r'^(import|from) \w', code, re.M):
        monkeypatch.chdir(ROOT)
        exec(compile(code, '<snippet>', 'exec'), {'__name__': 'snippet'})
    else:
        pytest.fail('a python block of the docs is neither a config '
                    '(_base_ = ...), nor code (imports), nor marked '
                    '<!-- snippet: fragment -->:\n' + code)


def test_snippets_found():
    ids = [p.id for p in snippets()]
    assert any(i.startswith('docs/watching.md') for i in ids)
    assert len(ids) >= 7
