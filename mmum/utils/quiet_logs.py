"""A console that shows the run, not every parameter.

Before the first iteration an OpenMMLab run prints 600 to 1,000+ lines: the
whole config, the system environment, one ``paramwise_options -- ...`` line
per parameter option (712 for GreenMIM Swin-B) and, in a script without a
log file, four lines of weight-initialisation info per parameter.
:func:`install` (run by ``import mmum``) adds a filter to the console
handler of every ``MMLogger`` created afterwards, which shows instead

- the environment in one line (Python, PyTorch, CUDA, GPU number, seed,
  distributed), and the hooks in one line (not their order per stage);
- one line saying where the config is (the log file and the work dir's
  copy); the Runner logs a short config summary of its own
  (:func:`config_summary`);
- one line the first time per-parameter options or initialisation lines
  come, which are left out.

Only the console is filtered: the log file of a run keeps every line.
``MMUM_FULL_LOG=1`` in the environment switches the filter off.
"""
import logging
import os
import re

_INIT_LINE = re.compile(r'^\n\S+ - torch\.Size\(\[[\d, ]*\]\): \n')
_ENV_KEYS = ('Python', 'PyTorch', 'CUDA available', 'GPU number', 'seed',
             'Distributed training')


def _short_env(msg: str) -> str:
    found = {}
    for line in msg.splitlines():
        key, _, value = line.strip().partition(': ')
        if key in _ENV_KEYS and key not in found:
            found[key] = value.split(' ')[0] if key == 'Python' else value
    return ('environment: ' + ', '.join(f'{k} {v}' for k, v in found.items())
            + ' (all of it in the log file)')


class ConsoleFilter(logging.Filter):
    """Shortens the bulky records on one console ``handler`` (see the
    module docstring); every other record passes unchanged."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler
        self.said = set()

    def _say(self, record, msg: str) -> None:
        short = logging.makeLogRecord(dict(record.__dict__, msg=msg,
                                           args=None))
        self.handler.emit(short)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or isinstance(record.msg, Exception):
            return True
        msg = record.getMessage()
        if msg.startswith('paramwise_options -- '):
            kind, text = 'paramwise', (
                'optimizer: per-parameter options (paramwise_options -- ...) '
                'are left off the console; the log file has them')
        elif _INIT_LINE.match(msg):
            kind, text = 'init', (
                'weight initialisation of each parameter: left off the '
                'console (a run writes it to its log file)')
        elif msg.startswith('Config:\n'):
            kind, text = None, (
                f'config: {msg.count(chr(10))} lines, in the log file and '
                'copied into the work dir')
        elif 'System environment:' in msg:
            kind, text = None, _short_env(msg)
        elif msg.startswith('Hooks will be executed in the following order'):
            names = dict.fromkeys(re.findall(r'\) (\w+Hook)', msg))
            kind, text = None, (f'hooks: {", ".join(names)} (their order '
                                'per stage in the log file)')
        else:
            return True
        if kind is None or kind not in self.said:
            self.said.add(kind)
            self._say(record, text)
        return False


def quiet_console(logger: logging.Logger) -> None:
    """Add a :class:`ConsoleFilter` to each console handler of ``logger``
    (stream handlers that are not file handlers), once."""
    for h in logger.handlers:
        if type(h) is logging.StreamHandler and not any(
                isinstance(f, ConsoleFilter) for f in h.filters):
            h.addFilter(ConsoleFilter(h))


def config_summary(cfg) -> str:
    """A few lines on what a config trains: model, encoder, data, batch,
    schedule, optimizer."""
    cfg = getattr(cfg, '_cfg_dict', cfg)  # mmengine Config -> ConfigDict

    def get(path, default=None):
        node = cfg
        for key in path.split('.'):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    model = get('model.type')
    backbone = get('model.backbone.type')
    arch = get('model.backbone.arch')
    ds = get('train_dataloader.dataset') or {}
    while isinstance(ds, dict) and isinstance(ds.get('dataset'), dict):
        ds = ds['dataset']
    loop = get('train_cfg') or {}
    length = (f"{loop['max_epochs']} epochs" if 'max_epochs' in loop else
              f"{loop['max_iters']} iterations" if 'max_iters' in loop
              else '?')
    optim = get('optim_wrapper.optimizer') or {}
    lines = [
        f'model {model}, encoder {backbone}'
        + (f' ({arch})' if isinstance(arch, str) else ''),
        f"data {ds.get('type')} at {ds.get('data_root')}, batch "
        f"{get('train_dataloader.batch_size')} per process"
        + (f" x {get('optim_wrapper.accumulative_counts')} accumulation"
           if get('optim_wrapper.accumulative_counts') else ''),
        f"{length}, {optim.get('type')} lr {optim.get('lr')}, work dir "
        f"{get('work_dir')}",
    ]
    return 'config summary:\n    ' + '\n    '.join(lines)


def install() -> None:
    """Filter the console of every MMLogger created from now on (unless
    ``MMUM_FULL_LOG=1``)."""
    from mmengine.logging import MMLogger
    init = MMLogger.__init__
    if getattr(init, '_mmum_quiet', False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if os.environ.get('MMUM_FULL_LOG') != '1':
            quiet_console(self)

    __init__._mmum_quiet = True
    MMLogger.__init__ = __init__
