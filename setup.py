from setuptools import find_packages, setup


def readme():
    with open('README.md', encoding='utf-8') as f:
        return f.read()


def version():
    scope = {}
    with open('mmum/version.py', encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


def requirements(path):
    with open(path, encoding='utf-8') as f:
        return [
            line.split('#')[0].strip() for line in f
            if line.split('#')[0].strip() and not line.startswith('-')
        ]


setup(
    name='mmum',
    version=version(),
    description='Fast masked-image-modeling pre-training of hierarchical '
    'vision transformers for OpenMMLab 2.x',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.8',
    install_requires=requirements('requirements/runtime.txt') +
    requirements('requirements/mminstall.txt'),
    extras_require={'tests': requirements('requirements/tests.txt')},
    license='Apache-2.0',
    zip_safe=False,
)
