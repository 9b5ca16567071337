"""End-to-end latency of pruned detectors in the deployment runtimes
(``tools/benchmark_deploy.py``).

A :class:`Variant` is one model of the comparison: the unpruned baseline, the same
share of every coupled group cut (:func:`uniform_export`), Torch-Pruning's L1
uniform pruning (:func:`torch_pruning_export`), each searched to a FLOPs budget, or a
GDP export made by training. Each is deployed with the deploy route
(:func:`gdp_det.deploy.export_model`: mmdeploy, static shape, post-processing and NMS
in the graph) and timed by a :class:`gdp_det.deploy.RuntimeSession` in ONNX Runtime
or OpenVINO on the CPU, the image tensor in and detections out, the variants
interleaved round by round in one process
(:func:`gdp_det.runtime_latency.runtime_medians`).
:func:`section_rows` and :func:`readme_lines` turn the stored results into Markdown.
"""
from __future__ import annotations

import copy
import glob
import os.path as osp
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

BACKEND_NAMES = {'onnxruntime': 'ONNX Runtime', 'openvino': 'OpenVINO'}


@dataclass(frozen=True)
class Variant:
    """One model to deploy and time: ``config`` + ``checkpoint`` (None: the config's
    seeded random init; latency does not depend on the weights), made by ``method``
    (``'baseline'``, ``'uniform'``, ``'tp_l1_uniform'`` or ``'gdp'``) at the FLOPs
    ``budget`` (None: none, or not a FLOPs budget)."""
    label: str
    method: str
    config: str
    checkpoint: Optional[str] = None
    budget: Optional[float] = None

    @property
    def slug(self) -> str:
        return ''.join(c if c.isalnum() or c in '.-' else '_' for c in self.label)


def _model_cfg(config: str, size: Tuple[int, int]):
    """``(cfg, gated model config)`` of the detector config: no pretrained weights, the
    FLOPs model at ``size``."""
    from ..cli import gdp_model_cfg, load_config, no_pretrained
    cfg = load_config(config)
    no_pretrained(cfg.model)
    return cfg, gdp_model_cfg(cfg, size)


def _exported(out_dir: str) -> Optional[Tuple[str, str]]:
    """``(config, checkpoint)`` of a finished export in ``out_dir`` (None: none)."""
    if not osp.isfile(osp.join(out_dir, 'prune_report.json')):
        return None
    config = glob.glob(osp.join(out_dir, '*_pruned.py'))
    if len(config) != 1:
        raise RuntimeError(f'{out_dir}: expected one *_pruned.py beside prune_report.json, '
                           f'found {len(config)}')
    return config[0], config[0][:-3] + '.pth'


def gdp_export(label: str, out_dir: str, budget: Optional[float] = None) -> Variant:
    """The GDP export (``tools/prune.py`` / the training's ``pruned/`` directory) in
    ``out_dir`` as a variant."""
    from ..cli import UserError
    found = _exported(out_dir)
    if found is None:
        raise UserError(f'{out_dir} holds no GDP export (prune_report.json, NAME_pruned.py, '
                        'NAME_pruned.pth); give the pruned/ directory of a GDP training run')
    return Variant(label, 'gdp', *found, budget=budget)


def uniform_export(config: str, size, budget: float, out_dir: str, seed: int = 0,
                   channel_divisor: int = 1) -> Variant:
    """Random channels of the seeded random init cut, the same share of every coupled
    group (:func:`.compare_methods.prune_random`), searched to ``budget`` of the FLOPs
    and exported by :func:`gdp_det.api.prune_and_export` into ``out_dir`` (reused when
    there), each group's kept channels rounded up to a multiple of ``channel_divisor``."""
    found = _exported(out_dir)
    if found is None:
        from ..api import prune_and_export
        from ..cli import build_randomly_initialised
        from .compare_methods import prune_random
        cfg, cfg.model = _model_cfg(config, size)
        gated = build_randomly_initialised(copy.deepcopy(cfg.model), seed)
        prune_random(gated, budget, seed)
        name = osp.splitext(osp.basename(config))[0]
        prune_and_export(cfg, gated, out_dir, name=name, channel_divisor=channel_divisor,
                         verify=False, force=True)
        found = _exported(out_dir)
    label = f'same share of every group, FLOPs {budget:g}'
    if channel_divisor > 1:
        label += f', widths multiple of {channel_divisor}'
    return Variant(label, 'uniform', *found, budget=budget)


def torch_pruning_export(config: str, size, budget: float, out_dir: str,
                         seed: int = 0) -> Variant:
    """Torch-Pruning 1.6's MetaPruner with L1 importance, uniform ratio, its own
    DependencyGraph (:func:`.compare_methods.prune_torch_pruning`), searched to
    ``budget`` of the FLOPs on the seeded random init, written into ``out_dir`` by
    :func:`.compare_methods.export_module` (reused when there)."""
    name = osp.splitext(osp.basename(config))[0] + '_tp'
    paths = osp.join(out_dir, f'{name}.py'), osp.join(out_dir, f'{name}.pth')
    if not osp.isfile(paths[1]):
        from ..cli import build_randomly_initialised
        from .compare_methods import export_module, prune_torch_pruning
        cfg, _ = _model_cfg(config, size)
        state = build_randomly_initialised(copy.deepcopy(cfg.model), seed).state_dict()
        model, reference, _ = prune_torch_pruning(cfg, state, budget, size, 'l1', False, seed)
        export_module(cfg, model, reference, out_dir, name, size)
    return Variant(torch_pruning_label(budget), 'tp_l1_uniform', *paths, budget=budget)


def torch_pruning_label(budget: float) -> str:
    """The Torch-Pruning variant's label at ``budget`` (also of its row when skipped)."""
    return f'Torch-Pruning L1 uniform, FLOPs {budget:g}'


def flops_ratios(variants: Sequence[Variant], size) -> List[float]:
    """Each variant's FLOPs over the first one's, all counted the same way
    (:func:`.compare_methods.counted_flops`, tensor-mode forward at ``size``)."""
    from mmdet.registry import MODELS

    from ..cli import load_config
    from .compare_methods import counted_flops
    counts = [counted_flops(MODELS.build(load_config(v.config).model), size) for v in variants]
    return [c / counts[0] for c in counts]


def deploy_all(models: Sequence[Tuple[str, Optional[str]]], dirs: Sequence[str],
               backend: str, input_shape: Optional[Tuple[int, int]] = None) -> None:
    """Deploy each ``(config, checkpoint)`` of ``models`` for ``backend`` into its
    directory of ``dirs`` by the deploy route (:func:`gdp_det.deploy.export_model`),
    ``input_shape`` ``(H, W)`` fixing the static input; a finished deployment there is
    reused, a partial one replaced."""
    from .. import deploy
    for (config, checkpoint), d in zip(models, dirs):
        if not osp.isfile(osp.join(d, deploy.DEPLOY_INFO)):
            deploy.export_model(config, checkpoint, backend, d, input_shape=input_shape,
                                force=True)


def deployed_latencies(dirs: Sequence[str], threads: int, rounds: int,
                       images: Sequence = ()) -> List[float]:
    """Milliseconds of one inference of each deployment in ``dirs`` (image tensor in,
    detections out) with ``threads`` runtime threads (0: all cores): the median over
    ``rounds`` interleaved rounds in this process
    (:func:`gdp_det.runtime_latency.session_medians`) of one inference of each of
    ``images`` (paths or BGR arrays; none: one fixed random input), per image."""
    from ..deploy import RuntimeSession
    from ..runtime_latency import session_medians
    sessions = [RuntimeSession(d, threads, images) for d in dirs]
    return [1e3 * t for t in session_medians(sessions, threads, rounds)]


def _threads(n: int) -> str:
    return {0: 'all cores', 1: '1 thread'}.get(n, f'{n} threads')


def section_rows(results: dict) -> List[str]:
    """RESULTS.md rows: per model, every variant's latency, speed-up, FLOPs ratio and
    their product per runtime and thread count; where the time goes in each pruned
    variant (1 thread); the variants that could not be made, and why."""
    rows = ['Normalised image tensor in, detections out (post-processing and NMS in the '
            'graph, mmdeploy\'s static-shape deploy configs), batch 1; random weights '
            '(latency does not depend on them, except that with random weights few boxes '
            'pass the score threshold, so NMS has little to do; trained detectors spend more '
            'in post-processing) except GDP\'s exports, which come from training. "same '
            'share of every group": random channels, the same share of every coupled channel '
            'group cut (the widths Torch-Pruning\'s uniform pruning gives, '
            'on our channel groups). Speed-up x FLOPs ratio is 1 when the runtime turns the '
            'FLOPs cut fully into speed, below 1 when it gains less. FLOPs counted by '
            'torch\'s FlopCounterMode on the tensor-mode forward (no post-processing), each '
            'variant the same way. Medians of interleaved rounds in one process: with 1 thread '
            'of the process\'s CPU time (the runtimes run every op in the calling thread: the '
            'latency on an idle core), with all cores of the wall clock. '
            'Command: `python tools/benchmark_deploy.py`; numbers in `benchmarks/deploy.json`.',
            '']
    for name, m in results['models'].items():
        rows += [f"### {name} at {m['size'][0]}x{m['size'][1]}", '',
                 f"{m['machine']}; {m['date']}; load average {m['load_average']} at the start; "
                 f"{m['rounds']} rounds.", '',
                 '| runtime | threads | variant | FLOPs ratio | latency (ms) | speed-up | '
                 'speed-up x FLOPs ratio |', '|---|---|---|---|---|---|---|']
        for r in m['rows']:
            rows.append(f"| {BACKEND_NAMES[r['backend']]} | {_threads(r['threads'])} | "
                        f"{r['variant']} | {r['flops_ratio']:.3f} | {r['ms']:.1f} | "
                        f"{r['speedup']:.2f}x | {r['speedup'] * r['flops_ratio']:.2f} |")
        rows += ['', 'Where the time goes (share of the summed op time, 1 thread, top 6 op '
                 'types):', '']
        for key, shares in m['profiles'].items():
            rows.append(f'- {key}: ' + ', '.join(f'{op} {s:.0%}'
                                                 for op, s in list(shares.items())[:6]))
        for s in m.get('skipped', []):
            rows.append(f"- not measured: {s['variant']}: {s['reason']}")
        rows.append('')
    return rows


def speedup(results: dict, model: str, backend: str, threads: int, variant: str
            ) -> Optional[float]:
    """The stored speed-up of ``variant`` (None: not measured)."""
    for r in results['models'].get(model, {}).get('rows', []):
        if (r['backend'], r['threads'], r['variant']) == (backend, threads, variant):
            return r['speedup']
    return None


def readme_lines(results: dict, goals: Sequence[Tuple[str, str, str, float]] = ()
                 ) -> List[str]:
    """The README's summary: per model, each pruned variant's FLOPs ratio and its speed-up
    in each runtime with 1 thread; then each goal ``(model, backend, variant, speed-up)``
    met or missed, by how much."""
    backends = sorted({r['backend'] for m in results['models'].values() for r in m['rows']})
    names = [BACKEND_NAMES[b] for b in backends]
    lines = ['Speed-up over the unpruned model end to end (image tensor in, detections out, '
             'NMS included; mmdeploy, batch 1, 1 thread, CPU; random weights except GDP\'s '
             'trained exports):', '',
             '| model | variant | FLOPs ratio | ' + ' | '.join(names) + ' |',
             '|---|---|---|' + '---|' * len(names)]
    for name, m in results['models'].items():
        seen = []
        for r in m['rows']:
            if r['variant'] == 'baseline' or r['variant'] in seen:
                continue
            seen.append(r['variant'])
            cells = [speedup(results, name, b, 1, r['variant']) for b in backends]
            lines.append(f"| {name} @{m['size'][0]}x{m['size'][1]} | {r['variant']} | "
                         f"{r['flops_ratio']:.2f} | "
                         + ' | '.join('—' if c is None else f'{c:.2f}x' for c in cells) + ' |')
    lines.append('')
    for model, backend, variant, goal in goals:
        got = speedup(results, model, backend, 1, variant)
        what = f'{model}, {variant}, {BACKEND_NAMES[backend]}, 1 thread'
        if got is None:
            lines.append(f'- Goal {goal:g}x for {what}: not measured yet.')
        else:
            verdict = 'met' if got >= goal else f'missed by {goal - got:.2f}x'
            lines.append(f'- Goal {goal:g}x for {what}: {got:.2f}x, {verdict}.')
    return lines
