"""Export a pruned detector as a plain mmdet config + checkpoint, atomically.

``DIR/<name>_pruned.py`` is the original config with the model's pruned widths
(mmdet's own fields where they exist, ``GDPPrunedModule`` wrappers for the rest),
``DIR/<name>_pruned.pth`` a plain ``state_dict`` + ``meta`` of builtin types
(loads with ``torch.load(weights_only=True)``), ``DIR/prune_report.json`` the
numbers. Files are written to a temporary directory and renamed into place, so an
interrupted export leaves the previous state intact.
"""
from __future__ import annotations

import copy
import json
import os.path as osp
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict

from .files import publish, staging_dir

EXPORT_FILES = ('{name}_pruned.py', '{name}_pruned.pth', 'prune_report.json')


class ExportExistsError(FileExistsError):
    """The output directory already holds an export."""


def detector_cfg(model_cfg: dict) -> dict:
    """The plain detector config inside a ``GDPDetector`` config (or itself)."""
    model_cfg = copy.deepcopy(model_cfg)
    if model_cfg.get('type') == 'GDPDetector':
        return model_cfg['detector']
    return model_cfg


def _component(name: str) -> str:
    return name.split('.', 1)[0]


def pruned_model_cfg(model_cfg: dict, shapes: Dict[str, dict],
                     attrs: Dict[str, dict]) -> dict:
    """Model config building the pruned detector (see :mod:`gdp_det.pruned_module`)."""
    cfg = detector_cfg(model_cfg)
    by_comp: Dict[str, dict] = {}
    for name, shape in sorted(shapes.items()):
        comp, rest = name.split('.', 1)
        by_comp.setdefault(comp, dict(shapes=[], attrs=[]))['shapes'].append(
            dict(name=rest, **shape))
    for name, values in sorted(attrs.items()):
        comp, rest = name.split('.', 1)
        by_comp.setdefault(comp, dict(shapes=[], attrs=[]))['attrs'].append(
            dict(name=rest, **values))
    _write_mmdet_fields(cfg, shapes)
    top: Dict[str, list] = dict(shapes=[], attrs=[])
    for comp, entries in by_comp.items():
        if isinstance(cfg.get(comp), list) or (isinstance(cfg.get(comp), dict)
                                               and 'type' in cfg[comp]):
            cfg[comp] = dict(type='GDPPrunedModule', module=cfg[comp], **entries)
        else:  # made by the detector itself (DETR's encoder, input_proj): narrowed from
            for k, items in entries.items():  # the top, after the detector is built
                top[k] += [dict(e, name=f"{comp}.{e['name']}") for e in items]
    if top['shapes'] or top['attrs']:
        cfg = dict(type='GDPPrunedModule', module=cfg, **top)
    return cfg


def _write_mmdet_fields(cfg: dict, shapes: Dict[str, dict]) -> None:
    """Write widths into mmdet's own fields where they exist (FPN-style necks)."""
    neck = cfg.get('neck')
    if not isinstance(neck, dict) or not isinstance(neck.get('in_channels'), (list, tuple)):
        return
    in_ch = list(neck['in_channels'])
    for i in range(len(in_ch)):
        s = shapes.get(f'neck.lateral_convs.{i}.conv')
        if s is not None:
            in_ch[i] = s['in_channels']
    neck['in_channels'] = type(neck['in_channels'])(in_ch)
    if not isinstance(neck.get('out_channels'), int):  # per-level widths (YOLOv3's neck)
        return
    # FPN-style necks build lateral and output convs from one ``out_channels``, but
    # they are different channel groups: write it only when every one agrees.
    outs = {shapes.get(n, {}).get('out_channels', neck.get('out_channels'))
            for n in _neck_conv_names(shapes, neck)}
    if len(outs) == 1:
        neck['out_channels'] = outs.pop()


def _neck_conv_names(shapes: Dict[str, dict], neck: dict) -> List[str]:
    num_ins = len(neck['in_channels'])
    names = [f'neck.{k}.{i}.conv' for k in ('lateral_convs', 'fpn_convs') for i in range(num_ins)]
    return names + [n for n in shapes if n.startswith('neck.fpn_convs.') and n not in names]


def export_config(cfg: Config, model_cfg: dict) -> Config:
    """Copy of the full training config with the pruned model and no GDP parts."""
    out = Config(copy.deepcopy(cfg._cfg_dict.to_dict()))
    out.model = model_cfg
    imports = list(out.get('custom_imports', {}).get('imports', []))
    if 'gdp_det' not in imports:
        imports.append('gdp_det')
    out.custom_imports = dict(imports=imports, allow_failed_imports=False)
    hooks = [h for h in out.get('custom_hooks', []) if h.get('type') != 'GDPHook']
    out.custom_hooks = hooks
    out.load_from = None
    out.resume = False
    return out


def _plain(obj):
    """Builtin-typed copy (checkpoint meta must load with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, 'item'):
        return obj.item()
    return str(obj)


def check_out_dir(out_dir: str, name: str, force: bool) -> None:
    existing = [f.format(name=name) for f in EXPORT_FILES
                if osp.exists(osp.join(out_dir, f.format(name=name)))]
    if existing and not force:
        raise ExportExistsError(f'{out_dir} already holds an export ({", ".join(existing)}); '
                                'choose another --out-dir or pass --force to replace it')


def write_export(out_dir: str, name: str, cfg: Config, model: nn.Module, report: dict,
                 meta: Optional[dict] = None, force: bool = False) -> List[str]:
    """Write config, checkpoint and report into ``out_dir`` atomically."""
    check_out_dir(out_dir, name, force)
    files = [f.format(name=name) for f in EXPORT_FILES]
    with staging_dir(out_dir) as tmp:
        cfg.dump(osp.join(tmp, files[0]))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(dict(state_dict=state, meta=_plain(meta or {})), osp.join(tmp, files[1]))
        with open(osp.join(tmp, files[2]), 'w') as f:
            json.dump(_plain(report), f, indent=2)
        publish(tmp, out_dir, files)  # the report last: it marks a complete export
    return [osp.join(out_dir, f) for f in files]
