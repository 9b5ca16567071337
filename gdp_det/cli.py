"""Shared pieces of the command-line tools: the error boundary every tool runs
behind (:func:`tool_main`, :class:`ArgumentParser`), loading configs, checkpoints
and JSON files."""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import os.path as osp
import sys
from typing import Callable, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, DictAction  # noqa: F401  (re-exported for tools)


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do.

    ``exit_code`` is the status the tool ends with (2 unless given).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` of every tool: adds ``--debug`` (show the traceback
    of a failure) and turns a usage error into a :class:`UserError`, so that
    :func:`tool_main` ends it with one line like any other bad input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument('--debug', action='store_true',
                          help='on failure, show the traceback instead of one line')

    def error(self, message: str):
        raise UserError(f'{message} (see {self.prog} --help)')


def _one_line(text: str, first_only: bool) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if first_only else '; '.join(lines)) if lines else ''


def describe_error(e: BaseException) -> Tuple[str, int]:
    """``(message, exit code)`` of a tool's failure: what is wrong and, in
    parentheses, how to fix it. Exceptions of no known kind are unexpected: their
    type and first line, exit code 1."""
    if isinstance(e, UserError):
        return _one_line(str(e), first_only=False), e.exit_code
    if isinstance(e, SyntaxError):  # mmengine: 'There are syntax errors in config file X: ...'
        return f'{_one_line(str(e), True)} (fix the Python syntax of that file)', 2
    if isinstance(e, KeyError) and 'registry' in str(e.args[0] if e.args else ''):
        what = str(e.args[0]).split(' Please check')[0].rstrip('.')
        return (f'{what} (check the type name in the config; a type from another package '
                "needs custom_imports = dict(imports=['package']))"), 2
    if isinstance(e, OSError):
        what = (f'{e.strerror}: {e.filename}' if e.strerror and e.filename
                else _one_line(str(e), True))
        fix = {FileNotFoundError: 'check the path', PermissionError: 'choose a path you may '
               'read or write', IsADirectoryError: 'give a file, not a directory',
               NotADirectoryError: 'a part of the path is a file'}.get(type(e))
        return (f'{what} ({fix})' if fix else what), 2
    if isinstance(e, ImportError):
        return (f'{_one_line(str(e), True)} (install the package, or fix custom_imports in '
                'the config)'), 2
    if isinstance(e, ValueError):  # bad values; also UnsupportedModuleError, whose message
        return _one_line(str(e), True), 2  # names the ways out
    from mmengine.config.utils import ConfigParsingError
    if isinstance(e, ConfigParsingError):
        return f'{_one_line(str(e), True)} (fix the config)', 2
    return (f'unexpected {type(e).__name__}: {_one_line(str(e), True)} (rerun with --debug '
            'for the traceback)'), 1


def tool_main(main: Callable[..., Optional[int]]) -> Callable[..., int]:
    """The error boundary of a tool: wraps ``main(argv=None)`` so that any failure
    ends with one line ``<tool>: error: <what> (<how to fix>)`` on stderr and a
    non-zero return value (:func:`describe_error`); with ``--debug`` in ``argv``
    the exception propagates with its traceback. Tools end with
    ``sys.exit(main())``."""
    prog = osp.basename(inspect.getsourcefile(main) or 'tool')

    @functools.wraps(main)
    def run(argv: Optional[Sequence[str]] = None) -> int:
        args = sys.argv[1:] if argv is None else [str(a) for a in argv]
        try:
            return main(argv) or 0
        except KeyboardInterrupt:
            print(f'{prog}: interrupted', file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (this is the boundary)
            if '--debug' in args:
                raise
            message, code = describe_error(e)
            print(f'{prog}: error: {message}', file=sys.stderr)
            return code
    return run


def load_json(path: str, what: str = 'JSON file'):
    """``json.load`` of ``path`` with errors that name the file."""
    if not osp.isfile(path):
        raise UserError(f'{what} not found: {path}')
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise UserError(f'{what} {path} is not valid JSON: {e} (it was cut short or edited; '
                        'write it again)') from e


def check_writable_dir(path: str, what: str = 'output directory') -> None:
    """Refuse, before any work, an output directory that cannot be created or written."""
    parent = osp.abspath(path)
    while not osp.exists(parent):  # the part of the path that exists
        parent = osp.dirname(parent)
    if not osp.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'{what} {path} cannot be written ({parent} is '
                        f'{"not a directory" if not osp.isdir(parent) else "read-only"}; '
                        'choose another path)')


def mmdet_config_path(name: str) -> str:
    """``mmdet::path/cfg.py`` -> the config file shipped inside the mmdet package."""
    if name.startswith('mmdet::'):
        import mmdet
        return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name[len('mmdet::'):])
    return name


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    path = mmdet_config_path(path)
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path} (check the path; mmdet\'s own '
                        'configs are mmdet::FOLDER/NAME.py)')
    if not os.access(path, os.R_OK):
        raise UserError(f'config file is not readable: {path} (check its permissions)')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as e:  # mmengine's first ast.parse names neither file nor line
        if e.lineno is None:  # mmengine's own message names the file
            raise
        raise UserError(f'config file {path} has a Python syntax error at line {e.lineno}: '
                        f'{e.msg} (fix the file)') from e
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def gdp_model_cfg(cfg: Config, input_size: Optional[Sequence[int]] = None,
                  exclude: Sequence[str] = (), on_unsupported: Optional[str] = None) -> dict:
    """The config's model as a ``GDPDetector`` (wrapping it when it is a plain one)."""
    model = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
    if model.get('type') != 'GDPDetector':
        model = dict(type='GDPDetector', detector=model)
    if input_size is not None:
        model['input_size'] = tuple(input_size)
    if exclude:
        model['exclude'] = list(model.get('exclude', [])) + list(exclude)
    if on_unsupported is not None:
        model['on_unsupported'] = on_unsupported
    return model


def no_pretrained(cfg) -> None:
    """No init_cfg that loads weights anywhere in the (model) config ``cfg`` (type
    ``Pretrained``, or a ``checkpoint`` that a backbone loads itself, as PVT's): random
    init, no download."""
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg)
    for k, v in items:
        inits = [c for c in (v if isinstance(v, list) else [v]) if isinstance(c, dict)]
        if k == 'init_cfg' and any(c.get('type') == 'Pretrained' or 'checkpoint' in c
                                   for c in inits):
            cfg[k] = None
        elif isinstance(v, (dict, list)):
            no_pretrained(v)


def build_randomly_initialised(model_cfg: dict, seed: int) -> torch.nn.Module:
    """``model_cfg`` built with mmdet's own random init, as the Runner does it
    (``init_weights``), seeded, without any pretrained weights. Parameters allocated with
    ``torch.Tensor(...)`` (DINO's and DDQ's ``level_embed``) hold leftover memory until
    ``init_weights``; EmbeddingRPNHead's learned proposals are random boxes until then."""
    import logging
    from mmdet.registry import MODELS
    from mmengine.logging import MMLogger
    no_pretrained(model_cfg)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # not its one INFO line per parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def load_state_dict(path: str) -> dict:
    if not osp.isfile(path):
        raise UserError(f'checkpoint not found: {path} (check the path)')
    try:
        ckpt = torch.load(path, map_location='cpu')
    except Exception as e:  # corrupt or not a torch file
        detail = _one_line(str(e), True) or type(e).__name__
        raise UserError(f'cannot read checkpoint {path}: {detail} (the file is damaged or not '
                        'a torch checkpoint)') from e
    return ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt


def check_state_dict(model: torch.nn.Module, state: dict, path: str,
                     need_gates: bool) -> None:
    """Refuse checkpoints that do not match the model (names keys and shapes)."""
    own = model.state_dict()
    has_gates = any(k.startswith('gdp_gates.') for k in state)
    if need_gates and not has_gates:
        raise UserError(f'{path} is a plain checkpoint without GDP gates; prune a checkpoint '
                        'written by GDP training (configs/gdp/...), or pass --random-gates '
                        'to check the model with random gates')
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
           if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.startswith('gdp_gates.')]
    if bad or missing:
        msg = [f'{path} does not match the config']
        msg += [f'  {k}: checkpoint {a} vs model {b}' for k, a, b in bad[:5]]
        msg += [f'  missing in checkpoint: {k}' for k in missing[:5]]
        msg.append('  use the config the checkpoint was trained with')
        raise UserError('\n'.join(msg))
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f'{path}: {k} contains NaN/Inf; the training diverged, use an '
                            'earlier checkpoint')


def check_checkpoint_for_model(model: torch.nn.Module, path: Optional[str],
                               full: bool = True) -> None:
    """Refuse a checkpoint that the built ``model`` would load only in part.

    A GDP-trained checkpoint (it holds ``gdp_gates``) given to a plain detector would
    lose its gates, so the model would compute something else. With ``full``, also
    refuse mismatching shapes and missing weights (mmengine would skip them with a
    warning).
    """
    if not path or path.startswith(('http://', 'https://')):
        return
    from .detector import unwrap
    model = unwrap(model)
    state = load_state_dict(path)
    if any(k.startswith('gdp_gates.') for k in state) and not hasattr(model, 'gdp_gates'):
        raise UserError(
            f'{path} was written by GDP training: its gates are part of the model, and this '
            'plain config would drop them. Use the GDP config it was trained with, or export '
            'the pruned model (tools/prune.py GDP_CONFIG CHECKPOINT --out-dir DIR) and use '
            'DIR/<name>_pruned.py with DIR/<name>_pruned.pth')
    if full:
        check_state_dict(model, state, path, need_gates=False)
