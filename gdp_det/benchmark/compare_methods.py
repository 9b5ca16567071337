"""The pruning methods of the comparison (``tools/benchmark_compare.py``).

Each :class:`Method` turns the shared baseline into a pruned detector written as a
plain mmdet config + checkpoint (what every later stage trains, evaluates and
times): GDP through its own phase and export; Torch-Pruning's MetaPruner and the
random-channel control through :func:`export_module`, which writes any narrowed copy
of the baseline as a ``GDPPrunedModule`` config. FLOPs are counted independently of
:mod:`gdp_det.flops` by ``torch.utils.flop_counter.FlopCounterMode`` on the
tensor-mode forward.
"""
from __future__ import annotations

import copy
import inspect
import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

# head layers whose outputs are the predictions (classes x anchors, box deltas): no
# pruner may narrow them
OUTPUT_LAYERS = ('retina_cls', 'retina_reg', 'conv_cls', 'conv_reg', 'rtm_cls', 'rtm_reg',
                 'rpn_cls', 'rpn_reg', 'fc_cls', 'fc_reg')


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    ``kind`` says how the baseline is pruned at a FLOPs budget ``b``: ``'control'``
    (not at all; runs once per seed, without a budget), ``'gdp'`` (a GDP phase with
    ``GDPHook(**options['hook'], <options['budget_key']>=b)`` over
    ``options['gdp_epochs']`` epochs (default: the comparison's), then its export),
    ``'torch_pruning'`` (MetaPruner with ``options['importance']`` in ``l1``, ``bn``,
    ``taylor`` and ``options['global_pruning']``, its ratio searched to ``b``
    FLOPs) or ``'random'`` (random channels, the same share of every coupled group,
    searched to ``b`` FLOPs). ``options['epochs_factor']`` (default 1) multiplies the
    epochs it trains after the baseline: a fine-tune given about the training compute
    that GDP's phase costs (its full-width iterations before the cut) instead of the
    same epochs.
    """
    name: str
    kind: str
    label: str
    options: dict = field(default_factory=dict)

    @property
    def budgeted(self) -> bool:
        return self.kind != 'control'

    @property
    def budget_kind(self) -> str:
        """What the budget bounds: ``'latency'`` (GDP's latency budget) or ``'flops'``."""
        return 'latency' if self.options.get('budget_key') == 'latency_target' else 'flops'

    def train_epochs(self, epochs: int) -> int:
        """The epochs it trains after the baseline where the comparison trains ``epochs``."""
        return max(1, round(epochs * self.options.get('epochs_factor', 1)))


def _tp(importance: str, global_pruning: bool) -> Method:
    scope = 'global' if global_pruning else 'uniform'
    label = {'l1': 'L1', 'bn': 'BN scale (L1 without BN)', 'taylor': 'Taylor'}[importance]
    return Method(f'tp_{importance}_{scope}', 'torch_pruning',
                  f'Torch-Pruning {label}, {scope}',
                  dict(importance=importance, global_pruning=global_pruning))


METHODS: List[Method] = [
    Method('control', 'control', 'no pruning (control)'),
    Method('gdp', 'gdp', 'GDP, FLOPs budget', dict(budget_key='flops_target')),
    Method('gdp_latency', 'gdp', 'GDP, latency budget',
           dict(budget_key='latency_target', hook=dict(flops_target=None))),
    *[_tp(imp, g) for imp in ('l1', 'bn', 'taylor') for g in (False, True)],
    Method('random', 'random', 'random channels, uniform'),
]
REFERENCE = 'gdp'  # the method every other one is compared with


def _longer(method: Method, factor: float) -> Method:
    return Method(f'{method.name}_x{factor:g}', method.kind,
                  f'{method.label}, {factor:g}x the epochs',
                  dict(method.options, epochs_factor=factor))


# the fine-tunes given GDP's training compute (issue 22 part 3: equal compute, not only
# equal epochs): GDP's phase trains the full-width model until its cut, 1.3-2x the
# counted training FLOPs of fine-tuning the pruned model for the same epochs (RESULTS
# (q), (r)); these train twice the epochs. Not in the default comparison, and not
# ranked with the methods trained as long as GDP (`--methods tp_l1_uniform_x2 ...`)
LONGER: List[Method] = [_longer(m, 2) for m in METHODS
                        if m.kind in ('torch_pruning', 'random')]


def _gdp_variant(name: str, label: str, gdp_epochs: Optional[int] = None, **hook) -> Method:
    options = dict(budget_key='flops_target', hook=hook)
    if gdp_epochs is not None:
        options['gdp_epochs'] = gdp_epochs
    return Method(f'gdp_{name}', 'gdp', f'GDP, {label}', options)


# GDP settings tried on a tuning split (`--methods gdp_before13 gdp_momentum ...`,
# benchmarks/RESULTS.md (m)); not in the default comparison. Each states the gate momentum
# and the GDP phase length (``gdp_epochs`` of the same total epochs after the baseline)
# it was measured with, so it keeps its meaning when the defaults change.
# the cut in the first half of the phase, made at lambda's full rate (the default before the
# gentle cut became it)
_HALF = dict(lambda_span=0.5, cut_rate_factor=1.0)
_BEFORE_13 = dict(grad_momentum=0.0, gdp_epochs=2, **_HALF)  # the defaults before issue 13
# momentum and a GDP phase of all the epochs, lambda free to grow 1e4-fold over the first
# quarter of the phase (the cut within it)
_EARLY_CUT = dict(gdp_epochs=3, grad_momentum=0.9, lambda_span=0.25, cut_rate_factor=1.0)
GDP_VARIANTS: List[Method] = [
    _gdp_variant('before13', 'defaults before issue 13 (no gate momentum, 2 GDP epochs)',
                 **_BEFORE_13),
    _gdp_variant('momentum', 'gate gradient momentum 0.9',
                 **dict(_BEFORE_13, grad_momentum=0.9)),
    _gdp_variant('eps1', 'eps 1 -> 1e-4 (soft gates while they are cut)', eps_start=1.0,
                 eps_end=1e-4, **_BEFORE_13),
    _gdp_variant('eps1_momentum', 'eps 1 -> 1e-4, momentum 0.9', eps_start=1.0, eps_end=1e-4,
                 **dict(_BEFORE_13, grad_momentum=0.9)),
    _gdp_variant('eps10_momentum', 'eps 10 -> 1e-4, momentum 0.9', eps_start=10.0,
                 eps_end=1e-4, **dict(_BEFORE_13, grad_momentum=0.9)),
    _gdp_variant('phase3', 'GDP phase = all epochs', **dict(_BEFORE_13, gdp_epochs=3)),
    _gdp_variant('momentum_phase3', 'momentum 0.9, GDP phase = all epochs',
                 gdp_epochs=3, grad_momentum=0.9, **_HALF),
    _gdp_variant('momentum_phase3_early', 'momentum 0.9, GDP phase = all epochs, cut in its '
                 'first quarter', **_EARLY_CUT),
    _gdp_variant('phase3_early', 'GDP phase = all epochs, cut in its first quarter',
                 **dict(_BEFORE_13, gdp_epochs=3, lambda_span=0.25)),
    _gdp_variant('lr0.03', 'gate_lr 0.03', gate_lr=0.03, **_BEFORE_13),
    _gdp_variant('cost0.5', 'cost_power 0.5 (half FLOPs-weighted)', cost_power=0.5, **_BEFORE_13),
    # the widths ONNX Runtime runs fast (what a latency budget there exports with
    # channel_divisor='auto'), for a FLOPs budget: tells the latency model's gain from the
    # divisor's at equal runtime latency
    _gdp_variant('div8', 'FLOPs budget, widths multiple of 8', gdp_epochs=3, grad_momentum=0.9,
                 channel_divisor=8, **_HALF),
    # the defaults with the full-width model trained to the end of the phase (before
    # issue 22): the shrink after the cut must leave the mAP where it was
    _gdp_variant('noshrink', 'no shrink after the cut', gdp_epochs=3, grad_momentum=0.9,
                 shrink_after_cut=False, **_HALF),
    # an earlier cut, so that more of the phase trains the shrunk model (issue 22 part 3:
    # training cost): the settings of `gdp_momentum_phase3_early` (RESULTS (m)), under the
    # name RESULTS (q)'s runs are stored with (`gdp_momentum_phase3`: the cut in the first
    # half, the default)
    _gdp_variant('cut_quarter', 'cut in the first quarter of the phase (lambda_span 0.25)',
                 **_EARLY_CUT),
    # the cut begins in the first quarter and lambda then grows at a third of its rate: the
    # burst in which the selection is made (RESULTS (v)) spread over more iterations, ending
    # about where the earlier default's does (issue 22 part 2: a gentler cut; the default
    # since RESULTS (x))
    _gdp_variant('gentle_cut', 'cut begun in the first quarter, lambda then a third as fast',
                 **dict(_EARLY_CUT, cut_rate_factor=1 / 3)),
    # the default ramp, then the same slower growth: the burst spread over more iterations
    # that start where the default's do (it ends later, so the phase costs more)
    _gdp_variant('gentle_cut_half', 'cut begun in the first half, lambda then a third as fast',
                 gdp_epochs=3, grad_momentum=0.9, **dict(_HALF, cut_rate_factor=1 / 3)),
    # a gradual cut (issue 22 part 3: training cost): the budget falls from 1 to its target
    # over the first 40 % of the phase, lambda reaching the gates in its first tenth, and
    # the live model shrinks each time it could lose another 0.1 of the FLOPs
    _gdp_variant('gradual', 'gradual cut over the first 40 % of the phase, shrunk as it goes',
                 gdp_epochs=3, grad_momentum=0.9, budget_ramp=0.4, lambda_span=0.1,
                 cut_rate_factor=1.0),
    # the gates' gradient normalised per group instead of by one scalar (issue 22 part 2:
    # per-group normalisation): every group meets the penalty at the same gradient scale,
    # the task loss ranking channels within a group only
    _gdp_variant('group_norm', 'gate gradient normalised per group', gdp_epochs=3,
                 grad_momentum=0.9, grad_norm='group', **_HALF),
]


def unavailable(method: Method) -> Optional[str]:
    """Why ``method`` cannot run here (``None`` when it can)."""
    if method.kind == 'gdp':
        from ..hooks import GDPHook
        key = method.options['budget_key']
        if key not in inspect.signature(GDPHook.__init__).parameters:
            return f'GDPHook has no {key} argument in this version of gdp_det'
    if method.kind == 'torch_pruning':
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            return 'Torch-Pruning is not installed (pip install torch-pruning==1.6.1)'
    return None


def gdp_hook_options(method: Method, budget: float, latency_backend: str = 'torch') -> dict:
    """The GDPHook arguments of a GDP method at ``budget``: its own, the budget, and
    ``min_channels`` as ``make demo`` (0.25) and README's 30 % run (0.1) use them. A
    latency budget is measured in ``latency_backend``, with the widths that runtime runs
    fast (``channel_divisor='auto'``) when it is a deployment runtime."""
    hook = dict(min_channels=0.25 if budget >= 0.5 else 0.1, **method.options.get('hook', {}),
                **{method.options['budget_key']: budget})
    if method.budget_kind == 'latency' and latency_backend != 'torch':
        hook.update(latency_backend=latency_backend, channel_divisor='auto')
    return hook


def gdp_hook_args(hook_cfg: dict) -> dict:
    """Every argument of the GDPHook that ``hook_cfg`` (a ``custom_hooks`` entry) builds,
    the ones it leaves out at this version's defaults: what a GDP run trained with. A run
    records it, so that runs collected in sessions apart can be checked to share it (the
    defaults changed while issue 22's comparisons were being collected)."""
    from ..hooks import GDPHook
    params = inspect.signature(GDPHook.__init__).parameters
    args = {k: p.default for k, p in params.items() if k != 'self'}
    args.update((k, v) for k, v in hook_cfg.items() if k != 'type')
    return args


# -- measurement --------------------------------------------------------------------

@torch.no_grad()
def counted_flops(model: nn.Module, input_size: Tuple[int, int]) -> int:
    """FLOPs (2 per multiply-accumulate) of ``model``'s tensor-mode forward of one
    ``input_size`` image, counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode
    from ..detector import detector_forward_fn
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        detector_forward_fn(tuple(input_size))(model)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(config: str, weights: Optional[str] = None) -> nn.Module:
    """The detector of the config file, with ``weights`` loaded (strict), in eval mode."""
    from mmdet.registry import MODELS
    from ..cli import load_state_dict
    model = MODELS.build(Config.fromfile(config).model)
    if weights:
        model.load_state_dict(load_state_dict(weights), strict=True)
    return model.eval()


# -- pruning ------------------------------------------------------------------------

def _narrowed_shapes(model: nn.Module, reference: nn.Module) -> Dict[str, dict]:
    """``GDPPrunedModule`` shape entries of the layers of ``model`` narrower than in
    ``reference`` (same architecture, unpruned)."""
    ref = dict(reference.named_modules())
    shapes = {}
    for name, m in model.named_modules():
        r = ref.get(name)
        if isinstance(m, nn.Linear):
            s = dict(in_features=m.in_features, out_features=m.out_features)
            old = dict(in_features=r.in_features, out_features=r.out_features)
        elif isinstance(m, nn.Conv2d):
            s = dict(in_channels=m.in_channels, out_channels=m.out_channels, groups=m.groups)
            old = dict(in_channels=r.in_channels, out_channels=r.out_channels, groups=r.groups)
        elif isinstance(m, nn.GroupNorm):
            s = dict(num_channels=m.num_channels, num_groups=m.num_groups)
            old = dict(num_channels=r.num_channels, num_groups=r.num_groups)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            s, old = dict(num_features=m.num_features), dict(num_features=r.num_features)
        else:
            continue
        if s != old:
            shapes[name] = s
    return shapes


def export_module(cfg: Config, model: nn.Module, reference: nn.Module, out_dir: str,
                  name: str, input_size) -> Tuple[str, str]:
    """Write ``model`` (a narrowed copy of ``reference``, built from ``cfg.model``) as
    an mmdet config + checkpoint; rebuilt from disk, it must give the same outputs.
    Returns the two paths."""
    import os
    from mmdet.registry import MODELS
    from ..api import max_output_difference
    from ..export import export_config, pruned_model_cfg
    model_cfg = pruned_model_cfg(cfg.model.to_dict(), _narrowed_shapes(model, reference), {})
    rebuilt = MODELS.build(copy.deepcopy(model_cfg))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    diff = max_output_difference(model, rebuilt, tuple(input_size))
    if not diff <= 1e-4:
        raise RuntimeError(f'{name}: the exported config rebuilds a different model '
                           f'(max relative output difference {diff:.3g})')
    os.makedirs(out_dir, exist_ok=True)
    paths = osp.join(out_dir, f'{name}.py'), osp.join(out_dir, f'{name}.pth')
    export_config(cfg, model_cfg).dump(paths[0])
    torch.save(dict(state_dict=model.state_dict()), paths[1])
    return paths


def first_within(prune: Callable[[float], Tuple[object, float]], budget: float,
                 hi: float = 0.95, grid: int = 1, steps: int = 10) -> Tuple[object, float]:
    """``prune(x)`` (the pruned model and its FLOPs ratio, for x in (0, hi]) at about the
    smallest x whose ratio is <= ``budget``: the first of ``grid`` even steps up to
    ``hi`` that reaches the budget (a coarse scan for pruners whose ratio is not
    monotone in x, e.g. Torch-Pruning's global ranking), then ``steps`` bisections
    below it. Raises ``RuntimeError`` when no step reaches the budget."""
    lo, best = 0.0, None
    for x in (hi * (i + 1) / grid for i in range(grid)):
        result = prune(x)
        if result[1] <= budget:
            hi, best = x, result
            break
        lo = x
    if best is None:
        raise RuntimeError(f'pruning as far as {hi:g} does not reach {budget:g} of the FLOPs')
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = prune(mid)
        if result[1] <= budget:
            hi, best = mid, result
        else:
            lo = mid
    return best


def gate_within_budget(gated: nn.Module, alive_for: Callable[[float], object], budget: float,
                       **search) -> float:
    """Set the gates of GDP model ``gated`` to ``alive_for(x)`` (which channels survive
    cutting by ``x``; 0/1 per global channel id) at the ``x`` that :func:`first_within`
    (``search``: its options) finds for ``budget`` of the FLOPs (``gdp_det.flops``).
    Returns that FLOPs ratio."""
    from ..flops import FlopsModel
    fm = FlopsModel(gated.gdp_gates.graph)

    def prune(x):
        alive = alive_for(x)
        return alive, fm.count(alive) / fm.full

    alive, ratio = first_within(prune, budget, **search)
    with torch.no_grad():
        gated.gdp_gates.a.copy_(torch.as_tensor(alive, dtype=torch.float32))
    return ratio


def prune_random(gated: nn.Module, budget: float, seed: int) -> float:
    """Zero the gates of random channels of the GDP model ``gated``: the same share
    of every coupled group, the share searched so that FLOPs (``gdp_det.flops``) are at
    most ``budget``. Returns that FLOPs ratio."""
    graph = gated.gdp_gates.graph
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(g.size, generator=gen) for g in graph.groups]

    def alive_for(share):
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for off, g, order in zip(graph.offsets, graph.groups, orders):
            alive[off + order[:max(1, int(round((1 - share) * g.size)))]] = True
        return alive

    return gate_within_budget(gated, alive_for, budget, hi=1.0, steps=30)


class TensorMode(nn.Module):
    """What Torch-Pruning traces: image -> every head output of the detector."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, x):
        return [t for level in self.det._forward(x) for t in level]


def taylor_gradients(cfg: Config, model: nn.Module, batches: int, seed: int) -> dict:
    """Gradients of the detection loss summed over ``batches`` training batches (what
    Torch-Pruning's Taylor importance reads from ``.grad``), by parameter name."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    model.train()
    model.zero_grad()
    # the config's scope: without a Runner built earlier in the process, 'VOCDataset'
    # would be looked up in mmengine's registry
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=seed)
        for _, batch in zip(range(batches), loader):
            data = model.data_preprocessor(batch, True)
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            loss.backward()
    model.eval()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _bn_scale_or_l1():
    """Torch-Pruning's BNScaleImportance, and its L1 magnitude importance for the
    groups without a BN layer (FPN and head convs), which BN scale alone never prunes
    (it could not reach 0.3 of the toy RetinaNet's FLOPs)."""
    import torch_pruning as tp
    bn, l1 = tp.importance.BNScaleImportance(), tp.importance.GroupMagnitudeImportance(p=1)

    def score(group):
        imp = bn(group)
        return l1(group) if imp is None else imp
    return score


def prune_torch_pruning(cfg: Config, state: dict, budget: float, input_size, importance: str,
                        global_pruning: bool, seed: int,
                        taylor_batches: int = 8) -> Tuple[nn.Module, nn.Module, float]:
    """The baseline (``cfg.model`` with ``state``) pruned by Torch-Pruning 1.6's
    MetaPruner with its own DependencyGraph, the prediction layers ignored, the
    pruning ratio searched (:func:`first_within`) so that the counted FLOPs ratio is
    at most ``budget``.
    Returns (pruned model, unpruned model, FLOPs ratio)."""
    import torch_pruning as tp
    from mmdet.registry import MODELS

    def build():
        det = MODELS.build(copy.deepcopy(cfg.model))
        det.load_state_dict(state)
        return det.eval()

    reference = build()
    full = counted_flops(reference, input_size)
    grads = (taylor_gradients(cfg, build(), taylor_batches, seed)
             if importance == 'taylor' else {})
    imp = {'l1': lambda: tp.importance.GroupMagnitudeImportance(p=1), 'bn': _bn_scale_or_l1,
           'taylor': tp.importance.GroupTaylorImportance}[importance]

    def pruned(ratio):
        det = build()
        for n, p in det.named_parameters():
            p.grad = grads.get(n)
        outputs = [m for n, m in det.named_modules() if n.rsplit('.', 1)[-1] in OUTPUT_LAYERS]
        tp.pruner.MetaPruner(TensorMode(det), torch.randn(1, 3, *input_size), importance=imp(),
                             pruning_ratio=ratio, global_pruning=global_pruning,
                             max_pruning_ratio=0.9, ignored_layers=outputs).step()
        det.zero_grad(set_to_none=True)
        return det, counted_flops(det, input_size) / full

    model, ratio = first_within(pruned, budget, grid=10, steps=6)
    return model, reference, ratio


def measure_latencies(models: List[nn.Module], input_size: Tuple[int, int], repeats: int = 20,
                      threads: int = 1) -> List[float]:
    """Median milliseconds of each model's tensor-mode forward (batch 1, ``input_size``)
    with ``threads`` torch threads, measured in this process and interleaved by
    :func:`gdp_det.latency.forward_latencies` (one thread: the process's CPU time, which
    leaves out the time other processes hold the core), denormals flushed so that
    tiny trained weights cost no extra time."""
    from ..latency import forward_latencies
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        return [1000 * t for t in forward_latencies(models, tuple(input_size),
                                                     repeats=repeats)]
    finally:
        torch.set_num_threads(old)
        torch.set_flush_denormal(False)
