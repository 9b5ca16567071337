"""Shared pieces of the command-line tools: loading configs and checkpoints."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction  # noqa: F401  (re-exported for tools)


class UserError(Exception):
    """A problem with the user's input; the message says what to do."""


def mmdet_config_path(name: str) -> str:
    """``mmdet::path/cfg.py`` -> the config file shipped inside the mmdet package."""
    if name.startswith('mmdet::'):
        import mmdet
        return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name[len('mmdet::'):])
    return name


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    path = mmdet_config_path(path)
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}')
    if not os.access(path, os.R_OK):
        raise UserError(f'config file is not readable: {path}')
    cfg = Config.fromfile(path)
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


def load_state_dict(path: str) -> dict:
    if not osp.isfile(path):
        raise UserError(f'checkpoint not found: {path}')
    try:
        ckpt = torch.load(path, map_location='cpu')
    except Exception as e:  # corrupt or not a torch file
        raise UserError(f'cannot read checkpoint {path}: {e}') from e
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
