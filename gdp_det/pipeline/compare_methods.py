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
    ``GDPHook(**options['hook'], <options['budget_key']>=b)``, then its export),
    ``'torch_pruning'`` (MetaPruner with ``options['importance']`` in ``l1``, ``bn``,
    ``taylor`` and ``options['global_pruning']``, its ratio searched to ``b``
    FLOPs) or ``'random'`` (random channels, the same share of every coupled group,
    searched to ``b`` FLOPs).
    """
    name: str
    kind: str
    label: str
    options: dict = field(default_factory=dict)

    @property
    def budgeted(self) -> bool:
        return self.kind != 'control'


def _tp(importance: str, global_pruning: bool) -> Method:
    scope = 'global' if global_pruning else 'uniform'
    label = {'l1': 'L1', 'bn': 'BN scale', 'taylor': 'Taylor'}[importance]
    return Method(f'tp_{importance}_{scope}', 'torch_pruning',
                  f'Torch-Pruning {label}, {scope}',
                  dict(importance=importance, global_pruning=global_pruning))


METHODS: List[Method] = [
    Method('control', 'control', 'no pruning (control)'),
    Method('gdp', 'gdp', 'GDP, FLOPs budget', dict(budget_key='flops_target')),
    Method('gdp_latency', 'gdp', 'GDP, latency budget',
           dict(budget_key='latency_target', hook=dict(flops_target=1.0))),
    *[_tp(imp, g) for imp in ('l1', 'bn', 'taylor') for g in (False, True)],
    Method('random', 'random', 'random channels, uniform'),
]
REFERENCE = 'gdp'  # the method every other one is compared with


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


def gdp_hook_options(method: Method, budget: float) -> dict:
    """The GDPHook arguments of a GDP method at ``budget``: its own, the budget, and
    ``min_channels`` as ``make demo`` (0.25) and README's 30 % run (0.1) use them."""
    return dict(min_channels=0.25 if budget >= 0.5 else 0.1,
                **method.options.get('hook', {}), **{method.options['budget_key']: budget})


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


def bisect(prune: Callable[[float], Tuple[nn.Module, float]], budget: float,
           steps: int = 10, hi: float = 0.95) -> Tuple[nn.Module, float]:
    """The model of ``prune(x)`` (x in [0, hi], more pruning with larger x, returning
    the model and its FLOPs ratio) with the smallest x whose ratio is <= ``budget``."""
    lo, best = 0.0, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model, ratio = prune(mid)
        if ratio <= budget:
            hi, best = mid, (model, ratio)
        else:
            lo = mid
    return best or prune(hi)


def prune_random(gated: nn.Module, budget: float, seed: int) -> float:
    """Zero the gates of random channels of the GDP model ``gated``: the same share
    of every coupled group, the share searched so that FLOPs (``gdp_det.flops``) are
    at most ``budget``. Returns that FLOPs ratio."""
    from ..flops import FlopsModel
    graph = gated.gdp_gates.graph
    fm = FlopsModel(graph)
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(g.size, generator=gen) for g in graph.groups]

    def alive_for(share):
        alive = torch.zeros(graph.num_channels, dtype=torch.bool)
        for off, g, order in zip(graph.offsets, graph.groups, orders):
            alive[off + order[:max(1, int(round((1 - share) * g.size)))]] = True
        return alive

    def prune(share):
        alive = alive_for(share)
        return alive, fm.count(alive) / fm.full

    alive, ratio = bisect(prune, budget, steps=30, hi=1.0)
    with torch.no_grad():
        gated.gdp_gates.a.copy_(alive.float())
    return ratio


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
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=seed)
    model.train()
    model.zero_grad()
    for _, batch in zip(range(batches), loader):
        data = model.data_preprocessor(batch, True)
        loss, _ = model.parse_losses(model.loss(**data))
        loss.backward()
    model.eval()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def prune_torch_pruning(cfg: Config, state: dict, budget: float, input_size, importance: str,
                        global_pruning: bool, seed: int,
                        taylor_batches: int = 8) -> Tuple[nn.Module, nn.Module, float]:
    """The baseline (``cfg.model`` with ``state``) pruned by Torch-Pruning 1.6's
    MetaPruner with its own DependencyGraph, the prediction layers ignored, the
    pruning ratio searched so that the counted FLOPs ratio is at most ``budget``.
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
    imp = {'l1': lambda: tp.importance.GroupMagnitudeImportance(p=1),
           'bn': tp.importance.BNScaleImportance,
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

    model, ratio = bisect(pruned, budget)
    return model, reference, ratio


@torch.no_grad()
def measure_latencies(models: List[nn.Module], input_size: Tuple[int, int], repeats: int = 20,
                      threads: int = 1) -> List[float]:
    """Median milliseconds of each model's tensor-mode forward (batch 1, one and the same
    random ``input_size`` image, ``threads`` torch threads), measured in this process
    and interleaved: every round times each model once in turn, after a warm-up round,
    so load from other processes spreads evenly over them."""
    import statistics
    import time
    from ..detector import detector_forward_fn
    forward = detector_forward_fn(tuple(input_size))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: List[List[float]] = [[] for _ in models]
    try:
        for r in range(repeats + 1):
            for model, ts in zip(models, times):
                model.eval()
                torch.manual_seed(0)  # the same image for every model
                t = time.perf_counter()
                forward(model)
                if r:
                    ts.append(1000 * (time.perf_counter() - t))
    finally:
        torch.set_num_threads(old)
    return [statistics.median(ts) for ts in times]
