"""``GDPPrunedModule``: build an mmdet component, then narrow listed layers.

mmdet configs have no field for per-layer widths inside a ResNet block, a head's
stacked convs and so on. An exported config wraps such a component::

    backbone=dict(type='GDPPrunedModule', module=dict(type='ResNet', ...),
                  shapes=[dict(name='layer1.0.conv1', in_channels=64, out_channels=23,
                               groups=1), ...],  # constant=True: a ConstantConv
                  attrs=[])

The builder returns the plain mmdet module (same class, same state-dict keys)
with the listed layers re-created at their pruned widths; weights come from the
pruned checkpoint.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn


def _empty_param(shape, like: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(like.new_zeros(shape), requires_grad=requires_grad)


def narrow_module(m: nn.Module, shape: dict) -> None:
    """Give conv/linear/BN/GN module ``m`` the widths in ``shape`` (weights zeroed)."""
    if isinstance(m, nn.ConvTranspose2d):
        cin, cout, groups = shape['in_channels'], shape['out_channels'], shape['groups']
        m.weight = _empty_param((cin, cout // groups) + tuple(m.kernel_size), m.weight,
                                m.weight.requires_grad)
    elif isinstance(m, nn.Conv2d):
        cin, cout, groups = shape['in_channels'], shape['out_channels'], shape['groups']
        m.weight = _empty_param((cout, cin // groups) + tuple(m.kernel_size), m.weight,
                                m.weight.requires_grad)
        m.groups = groups
    elif isinstance(m, nn.Linear):
        m.weight = _empty_param((shape['out_features'], shape['in_features']), m.weight,
                                m.weight.requires_grad)
        m.in_features, m.out_features = shape['in_features'], shape['out_features']
        if m.bias is not None:
            m.bias = _empty_param((shape['out_features'], ), m.bias, m.bias.requires_grad)
        return
    elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        if isinstance(m, nn.GroupNorm):
            n = m.num_channels = shape['num_channels']
            m.num_groups = shape['num_groups']
        else:
            n = m.num_features = shape['num_features']
        for attr in ('weight', 'bias'):
            p = getattr(m, attr)
            if p is not None:
                setattr(m, attr, _empty_param((n, ), p, p.requires_grad))
        if getattr(m, 'running_mean', None) is not None:
            m.running_mean = m.running_mean.new_zeros(n)
            m.running_var = m.running_var.new_ones(n)
        return
    else:
        raise TypeError(f'GDPPrunedModule cannot narrow {type(m).__name__}')
    m.in_channels, m.out_channels = cin, cout
    if m.bias is not None:
        m.bias = _empty_param((cout, ), m.bias, m.bias.requires_grad)


class ConstantConv(nn.Module):
    """A conv whose kernel is all zero once the gates are absorbed (every channel it
    reads has a zero gate): its output is its bias (or 0) at every position, so it
    computes nothing. Keeps the conv's ``bias`` state-dict key. E.g. the second conv
    of a residual block whose inner group was switched off: the block reduces to its
    shortcut plus the constant of its last norm."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.out_channels = conv.out_channels
        for attr in ('kernel_size', 'stride', 'padding', 'dilation'):
            setattr(self, attr, tuple(getattr(conv, attr)))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x):
        h, w = ((x.shape[2 + i] + 2 * self.padding[i] - self.dilation[i] *
                 (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1 for i in range(2))
        out = x.new_zeros(x.shape[0], self.out_channels, h, w)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition('.')
    setattr(root.get_submodule(parent) if parent else root, child, new)


def apply_pruned_shapes(root: nn.Module, shapes: List[dict],
                        attrs: Optional[List[dict]] = None) -> nn.Module:
    modules = dict(root.named_modules())
    for entry in shapes:
        entry = dict(entry)
        name = entry.pop('name')
        if name not in modules:
            raise KeyError(f'GDPPrunedModule: no layer named {name!r} in '
                           f'{type(root).__name__}; the config does not match this export')
        constant = entry.pop('constant', False)
        narrow_module(modules[name], entry)
        if constant:
            replace_module(root, name, ConstantConv(modules[name]))
    for entry in attrs or []:
        entry = dict(entry)
        target = modules[entry.pop('name')]
        for k, v in entry.items():
            setattr(target, k, v)
    return root


def build_pruned_module(module: dict, shapes: List[dict], attrs: Optional[List[dict]] = None,
                        **kwargs):
    """Registered as ``GDPPrunedModule`` in mmdet's MODELS registry.

    Extra keyword arguments (e.g. ``train_cfg``/``test_cfg`` that detectors pass to
    their heads) go to the wrapped module's config. ``module`` may be a list of
    configs (mmdet builds it as an ``nn.Sequential``, e.g. Libra R-CNN's neck).
    """
    from mmdet.registry import MODELS
    if kwargs:
        module = dict(module, **kwargs)
    return apply_pruned_shapes(MODELS.build(module), shapes, attrs)
