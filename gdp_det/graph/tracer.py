"""The tracer: a ``TorchFunctionMode`` that follows channel atoms through a forward.

Every torch call of the forward reaches :meth:`ChannelTracer.__torch_function__`,
which runs it and hands it to its handler in the op table (:mod:`.ops`). Two
kinds of computation never reach a ``TorchFunctionMode`` and are watched apart:
custom ``torch.autograd.Function`` classes whose forward calls compiled code
(mmcv's deformable conv, RoIAlign), seen through :func:`watch_autograd_functions`
wherever they run, in leaf modules or not; and leaf modules that call compiled
code directly, seen through :meth:`ChannelTracer.module_hook`.
"""
from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.autograd.function import FunctionCtx
from torch.overrides import TorchFunctionMode

from .atoms import FIXED, LayerCall, Layout, UnionFind, flat_tensors, is_under
from .ops import handler_of, op_name


class ChannelTracer(TorchFunctionMode):
    """Follows channel atoms through every torch function call of a forward.

    State the op handlers read and write: ``uf`` (atoms and their unions), the
    layout of each traced tensor (:meth:`layout`, :meth:`set_layout`), per module
    the atoms of its output channels (``out_atoms``), of its input channels
    (``in_atoms``, conv/linear), of its norm channels (``norm_atoms``), whether it
    is depthwise, and every conv/linear call (``calls``). A handler that cannot
    follow some channels fixes them (:meth:`fix`) or, for ops it does not
    understand, reports them (:meth:`fix_unsupported`).
    """

    def __init__(self, model: nn.Module, passthrough_types: Tuple[type, ...] = ()):
        super().__init__()
        self.uf = UnionFind()
        self.layouts: Dict[int, Layout] = {}
        self.alive: List[torch.Tensor] = []  # keep traced tensors alive: ids stay unique
        self.names = {m: n for n, m in model.named_modules()}
        self.param_owner: Dict[int, nn.Module] = {}
        for m in model.modules():
            for p in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                self.param_owner.setdefault(id(p), m)
        self.out_atoms: Dict[nn.Module, np.ndarray] = {}
        self.in_atoms: Dict[nn.Module, np.ndarray] = {}
        self.norm_atoms: Dict[nn.Module, np.ndarray] = {}
        self.depthwise: Dict[nn.Module, bool] = {}
        self.calls: List[LayerCall] = []
        self.fixed_reasons: Dict[str, str] = {}
        self.passthrough_types = passthrough_types
        self.passthrough_in: Dict[str, np.ndarray] = {}
        self.stack: List[str] = []  # names of the modules whose forward is running
        self.unsupported: Dict[str, str] = {}  # module name -> what was not understood
        self.pending: List[Tuple[str, str, np.ndarray]] = []  # see fix_unsupported
        self.inside = 0  # > 0 while a torch function runs (its inner calls are its own)

    # -- layouts and fixing ------------------------------------------------------------
    def layout(self, t) -> Optional[Layout]:
        if isinstance(t, torch.Tensor):
            return self.layouts.get(id(t))
        return None

    def set_layout(self, t: torch.Tensor, lay: Layout) -> None:
        self.layouts[id(t)] = lay
        self.alive.append(t)

    def fix(self, atoms: np.ndarray, reason: str) -> None:
        for a in atoms.tolist():
            if self.uf.find(a) != FIXED:
                self.uf.union(FIXED, a)
                self.fixed_reasons.setdefault(reason, reason)

    def fix_all(self, objs, reason: str) -> None:
        for t in flat_tensors(objs):
            lay = self.layout(t)
            if lay is not None:
                self.fix(lay.atoms, reason)

    def fix_unsupported(self, objs, what: str, module: Optional[str] = None) -> None:
        """Note an op the tracer does not understand; see :meth:`resolve_unsupported`."""
        atoms = [lay.atoms for lay in map(self.layout, flat_tensors(objs)) if lay is not None]
        if atoms:
            where = module or self.owner_module()
            self.pending.append((where, what, np.concatenate(atoms)))

    def fix_opaque(self, module: nn.Module, args, what: str) -> None:
        """A module whose forward is replaced by an output of its declared shape
        (:mod:`.opaque`): the channels of its inputs and of every layer that ran inside
        it before it stopped (their outputs may be used by the code that did not run)
        are kept, and what was noted inside it is named after it."""
        name = self.names[module]
        self.pending = [(name, what, atoms) if is_under(where, [name]) else (where, w, atoms)
                        for where, w, atoms in self.pending]
        self.fix_unsupported(args, what, name)
        inner = [self.out_atoms[m] for m in module.modules() if m in self.out_atoms]
        if inner:
            self.pending.append((name, what, np.concatenate(inner)))

    def resolve_unsupported(self, exclude: Sequence[str]) -> None:
        """Fix the channels of every op noted by :meth:`fix_unsupported`.

        Called once the rest is known: an op whose channels are fixed anyway (model
        outputs, GroupNorm, excluded modules) costs nothing; the others are listed
        in ``unsupported`` (module name -> op).
        """
        for where, what, atoms in self.pending:
            if not is_under(where, exclude) and any(self.uf.find(a) != FIXED
                                                    for a in atoms.tolist()):
                self.unsupported.setdefault(where, what)
        for where, what, atoms in self.pending:
            self.fix(atoms, f'{what} in {where} is not understood by the tracer')
        self.pending = []

    def tie_rows(self, table: np.ndarray) -> None:
        """Union every row of a 2-D atom table with its first row, elementwise: column
        ``j`` becomes one channel (one gate)."""
        self.uf.union_arrays(np.tile(table[0], len(table) - 1), table[1:].reshape(-1))

    def input_atoms(self, x: torch.Tensor, dim: int, size: int, reason: str) -> np.ndarray:
        """The atoms of ``x`` along ``dim`` if it is traced that way, else fresh fixed
        atoms (and whatever layout ``x`` had is fixed)."""
        lay = self.layout(x)
        if lay is not None and lay.dim == dim % x.dim() and len(lay.atoms) == size:
            return lay.atoms
        if lay is not None:
            self.fix(lay.atoms, reason)
        atoms = self.uf.new(size)
        self.fix(atoms, 'input not traced')
        return atoms

    # -- modules -------------------------------------------------------------------------
    def current_module(self) -> str:
        return self.stack[-1] if self.stack else ''

    def owner_module(self) -> str:
        """Name of the innermost module whose method is running (read off the Python
        stack: heads are often run by a direct ``head.forward(x)`` call, which no
        module hook sees), else the innermost hooked module; ``'(detector)'`` for the
        top-level model's own code."""
        frame = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get('self')
            if isinstance(owner, nn.Module) and owner in self.names:
                return self.names[owner] or self.current_module() or '(detector)'
            frame = frame.f_back
        return self.current_module() or '(detector)'

    def push(self, module, args) -> None:
        self.stack.append(self.names[module])

    def pop(self, module, args, output) -> None:
        if self.stack:
            self.stack.pop()

    def module_out(self, m: nn.Module, n: int) -> np.ndarray:
        if m not in self.out_atoms:
            self.out_atoms[m] = self.uf.new(n)
        return self.out_atoms[m]

    def module_in(self, m: nn.Module, atoms: np.ndarray) -> None:
        prev = self.in_atoms.get(m)
        if prev is None:
            self.in_atoms[m] = atoms
        else:  # a layer called several times reads the same channels every time
            self.uf.union_arrays(prev, atoms)

    def passthrough(self, lay: Layout, outs: Sequence[torch.Tensor],
                    module: Optional[str] = None) -> None:
        """Record a per-channel op (RoI pooling) run by ``module`` (default: the
        current one) and give its outputs the channels of its input."""
        self.passthrough_in.setdefault(module or self.current_module(), lay.atoms)
        for o in outs:
            if 0 <= lay.dim < o.dim() and o.shape[lay.dim] == len(lay.atoms):
                self.set_layout(o, lay)

    def module_hook(self, module, inputs, output) -> None:
        """Leaf modules whose data path the mode cannot see (compiled ops)."""
        ins = [t for t in flat_tensors(inputs) if self.layout(t) is not None]
        if not ins:
            return
        outs = flat_tensors(output)
        if isinstance(module, self.passthrough_types) and outs:
            lay = self.layout(ins[0])
            self.passthrough(lay, [o for o in outs if o.dim() == ins[0].dim()],
                             self.names[module])
            return
        if outs and all(self.layout(o) is None for o in outs):
            self.fix_unsupported(ins, f'{type(module).__name__} (opaque)', self.names[module])

    # -- ops ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.inside:  # called by a handler of an autograd.Function (see below)
            return func(*args, **kwargs)
        self.inside += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.inside -= 1
        self.dispatch(func, args, kwargs, out)
        return out

    def function_forward(self, cls: type, args, kwargs, out) -> None:
        """Called after the forward of a custom ``autograd.Function`` ran."""
        if self.inside:  # called by a torch function this mode handles as a whole
            return
        if args and isinstance(args[0], FunctionCtx):
            args = args[1:]
        self.inside += 1
        try:
            self.dispatch(cls, args, kwargs, out)
        finally:
            self.inside -= 1

    def dispatch(self, func, args, kwargs, out) -> None:
        try:
            handler_of(func)(self, func, args, kwargs, out)
        except Exception as e:  # never let tracing hide the real forward's result
            self.fix_unsupported((args, kwargs), f'{op_name(func)} (tracer error: {e})')


def _subclasses(cls: type) -> Iterator[type]:
    seen = set()
    todo = list(cls.__subclasses__())
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            todo += c.__subclasses__()
            yield c


@contextmanager
def watch_autograd_functions(callback: Callable[[type, tuple, dict, object], object]):
    """Call ``callback(cls, args, kwargs, output)`` after the forward of any custom
    ``torch.autograd.Function`` that runs while the context is open; what it returns,
    unless ``None``, replaces the output.

    The hook wraps each subclass's ``forward`` (which ``apply`` looks up per call),
    not ``apply``: extensions bind ``apply`` at import (mmcv:
    ``deform_conv2d = DeformConv2dFunction.apply``). Everything is restored on exit.
    """
    patched = []
    for cls in _subclasses(torch.autograd.Function):
        fwd = cls.__dict__.get('forward')
        if isinstance(fwd, staticmethod):
            patched.append((cls, fwd))
            setattr(cls, 'forward', staticmethod(_reporting(cls, fwd.__func__, callback)))
    try:
        yield
    finally:
        for cls, fwd in patched:
            setattr(cls, 'forward', fwd)


def _reporting(cls: type, forward: Callable, callback: Callable) -> Callable:
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        out = forward(*args, **kwargs)
        replaced = callback(cls, args, kwargs, out)
        return out if replaced is None else replaced
    return wrapped
