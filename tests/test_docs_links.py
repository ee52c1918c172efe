"""Every relative link and every repository path named in README.md,
docs/ and configs/**/README.md exists, so a reader who follows a link or
copies a command finds the file, the config or the tool it names."""
import glob
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = sorted(
    [osp.join(ROOT, 'README.md')] +
    glob.glob(osp.join(ROOT, 'docs', '**', '*.md'), recursive=True) +
    glob.glob(osp.join(ROOT, 'configs', '**', 'README.md'), recursive=True))

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
# a path into the repository as commands name it: configs/..., tools/...
PATH = re.compile(
    r'(?<![\w./-])((?:configs|tools|tests|mmum|docs)/[\w./+*-]*[\w+*-])')
# placeholders a reader fills in, and files a run creates
SKIP = re.compile(r'[<>{}*]|^work_dirs|/X\.py$|\.\.\.')


def links(path):
    with open(path) as f:
        text = f.read()
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue  # web address or anchor
        yield target.split('#')[0], osp.dirname(path)
    for target in PATH.findall(text):
        yield target.rstrip('.'), ROOT


def test_docs_exist():
    names = {osp.relpath(p, ROOT) for p in DOCS}
    assert 'README.md' in names
    assert any(n.startswith('docs/') for n in names)


@pytest.mark.parametrize('path', DOCS, ids=lambda p: osp.relpath(p, ROOT))
def test_every_link_and_path_exists(path):
    missing = sorted({
        target for target, base in links(path)
        if not SKIP.search(target) and
        not osp.exists(osp.normpath(osp.join(base, target)))})
    assert not missing, (
        f'{osp.relpath(path, ROOT)} names files that do not exist: '
        f'{missing}')
