"""The comparison of pruning methods (``tools/benchmark_compare.py``), run by run.

Stages, each resumable (a rerun skips what finished, an interrupted training resumes
from its last checkpoint):

1. the baseline: the config's own schedule (or ``baseline_checkpoint``), then trained
   on at the phases' schedule (``phase_schedule``) until the mAP on the tuning split
   (the config's ``val_dataloader``) has not risen for ``patience`` epochs; the best
   epoch is the shared baseline of every run (``patience=0``: the start as it is);
2. one run per method, budget and seed (:func:`make_plan`): prune the baseline,
   evaluate the pruned model, train it so that it has ``epochs`` epochs after the
   baseline in all (GDP: its phase counts), evaluate it on the test split (the
   config's ``test_dataloader``), count its FLOPs (``FlopCounterMode``) and params,
   and its training cost after the baseline: the wall time of its training
   (``train_seconds``) and the counted training FLOPs (``train_flops``: three times
   the forward FLOPs of every training image, at the width the model had then: a GDP
   phase is full width until its shrink, see :func:`training_flops`);
   ``<work_dir>/runs/<run>/result.json`` (atomic) marks it finished;
3. :func:`collect`: every finished model's CPU latency measured in this process,
   interleaved (in torch, or deployed in ``Settings.latency_backend``), then
   ``compare.json`` (see :mod:`.compare_summary`).
"""
from __future__ import annotations

import copy
import glob
import json
import os
import os.path as osp
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config

from ..api import prune_and_export
from ..cli import gdp_model_cfg, load_state_dict
from ..files import atomic_write
from ..pipeline import evaluate, gdp_config, phase_schedule, stage, stage_result, train
from . import compare_methods as cm
from .compare_methods import GDP_VARIANTS, LONGER, METHODS, Method, unavailable
from .compare_summary import summarize

# rough costs for --dry-run before any run has finished: seconds per image in one stream
# (one thread, another stream beside it, 2 CPU cores) on the toy RetinaNet ...
TRAIN_S_PER_IMAGE = 0.07
EVAL_S_PER_IMAGE = 0.05
# ... and in its baseline (all threads, alone: `make demo`'s 16-epoch baseline, 2026-12-02,
# 1.73 s per training batch of 8, 0.54 s per test batch of 8): a detector's measured
# baseline scales the costs above by its ratio to these
BASELINE_TRAIN_S_PER_IMAGE = 0.22
BASELINE_EVAL_S_PER_IMAGE = 0.07


@dataclass
class Settings:
    """What to compare: ``methods`` (names in ``METHODS``) at ``budgets`` (FLOPs
    ratios) with ``seeds`` (of each run's pruning and training), ``epochs`` of training
    after the baseline for every method (GDP: ``gdp_epochs`` of them in its phase), on
    the phases' schedule at ``lr_factor`` times the config's learning rate. Latency is
    measured in ``latency_backend``: ``'torch'`` (the tensor-mode forward) or a
    deployment runtime (``'onnxruntime'``, ``'openvino'``: each model deployed end to
    end, timed on the first ``latency_images`` images of the test split, per image); GDP's
    latency budgets are then measured in that runtime as well. With
    ``distill_weight`` > 0 every training after the baseline (GDP's phase, every
    fine-tune, the control's) adds :class:`~gdp_det.distill.DistillHook` with that
    weight, the baseline its teacher. ``baseline_seed`` seeds the baseline's training
    (None: the config's ``randomness``), so that parts of one comparison trained apart
    (:mod:`.compare_merge`) start from independent baselines."""
    methods: Sequence[str] = tuple(m.name for m in METHODS)
    budgets: Sequence[float] = (0.5, 0.3)
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 3
    gdp_epochs: int = 3
    lr_factor: float = 0.1
    baseline_checkpoint: Optional[str] = None
    patience: int = 3
    converge_max_epochs: int = 30
    latency_repeats: int = 20
    threads: int = 1
    latency_backend: str = 'torch'
    latency_images: int = 8
    distill_weight: float = 0.0
    baseline_seed: Optional[int] = None
    extra: dict = field(default_factory=dict)  # recorded in compare.json as given


@dataclass(frozen=True)
class Run:
    """One pruning + training run; ``budget`` is None for the unpruned control."""
    method: Method
    budget: Optional[float]
    seed: int

    @property
    def name(self) -> str:
        budget = '' if self.budget is None else f'_b{self.budget:g}'
        return f'{self.method.name}{budget}_s{self.seed}'


def select_methods(names: Sequence[str]) -> List[Method]:
    by_name = {m.name: m for m in METHODS + GDP_VARIANTS + LONGER}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f'unknown method(s) {", ".join(unknown)}; known: {", ".join(by_name)}')
    return [by_name[n] for n in names]


def make_plan(settings: Settings) -> Tuple[List[Run], List[dict]]:
    """The runs, seed by seed (each seed gives every method one run before the next
    seed starts), and the skipped methods with the reason."""
    runs, skipped = [], []
    methods = select_methods(settings.methods)
    for m in methods:
        reason = unavailable(m)
        if reason:
            skipped.append(dict(method=m.name, label=m.label, reason=reason))
    ok = [m for m in methods if not any(s['method'] == m.name for s in skipped)]
    for seed in settings.seeds:
        runs += [Run(m, None, seed) for m in ok if not m.budgeted]
        runs += [Run(m, b, seed) for b in settings.budgets for m in ok if m.budgeted]
    return runs, skipped


def streams(runs: Sequence[Run], jobs: int) -> List[List[Run]]:
    """``runs`` dealt in turn into at most ``jobs`` non-empty streams, each in the plan's
    order (seed by seed), so that every stream finishes its seeds in turn."""
    return [list(runs[i::jobs]) for i in range(min(jobs, len(runs)))]


def result_path(work_dir: str, run: Run) -> str:
    return osp.join(work_dir, 'runs', run.name, 'result.json')


def load_results(work_dir: str, runs: Sequence[Run]) -> List[dict]:
    out = []
    for run in runs:
        if osp.isfile(result_path(work_dir, run)):
            with open(result_path(work_dir, run)) as f:
                out.append(json.load(f))
    return out


def estimate_seconds(run: Run, settings: Settings, num_train: int, num_test: int,
                     finished: Sequence[dict], scale: Tuple[float, float] = (1.0, 1.0)
                     ) -> float:
    """Expected wall time of ``run``: the mean of the finished runs of its method (of
    any method when none), else the rough per-image costs times ``scale`` (training,
    evaluation: see :func:`cost_scale`)."""
    for pool in ([r for r in finished if r['method'] == run.method.name], finished):
        times = [r['seconds'] for r in pool if r.get('seconds')]
        if times:
            return sum(times) / len(times)
    evals = 1 if run.budget is None else 2
    return (run.method.train_epochs(settings.epochs) * num_train * TRAIN_S_PER_IMAGE * scale[0]
            + evals * num_test * EVAL_S_PER_IMAGE * scale[1])


def cost_scale(work_dir: str, num_test: int, unmeasured: Optional[Tuple[float, float]] = (
        1.0, 1.0)) -> Optional[Tuple[float, float]]:
    """How much costlier per image this comparison's detector is than the toy RetinaNet
    the rough costs were measured on, (training, evaluation): its baseline's measured
    seconds per training image (``baseline`` stage) and per test image (``baseline_eval``,
    over ``num_test`` images) over the toy RetinaNet's. The evaluation's ratio stands in
    for training's when the baseline was given (``baseline_checkpoint``), and 1 for what
    is not measured yet; ``unmeasured`` when neither is."""
    trained, evaluated = (stage_result(work_dir, name) or {}
                          for name in ('baseline', 'baseline_eval'))
    ev = (evaluated['eval_seconds'] / num_test / BASELINE_EVAL_S_PER_IMAGE
          if evaluated.get('eval_seconds') and num_test else None)
    tr = (trained['train_seconds'] / (trained['train_iters'] * trained['batch_size'])
          / BASELINE_TRAIN_S_PER_IMAGE if trained.get('train_seconds') else ev)
    if tr is None:
        return unmeasured
    return (tr, ev or tr)


def training_flops(images_full: int, flops_full: float, images_pruned: int,
                   flops_pruned: float, images_narrowed: Sequence[Sequence[float]] = ()
                   ) -> float:
    """Counted training FLOPs: forward and backward of each image, taken as three
    forwards (the backward computes the gradients of activations and of weights, each
    a forward's worth), ``images_full`` at ``flops_full`` per forward,
    ``images_pruned`` at ``flops_pruned`` and, for each ``(images, ratio)`` of
    ``images_narrowed`` (a gradual cut's narrowed models before its last shrink),
    ``images`` at ``ratio * flops_full``. Gating and other elementwise work is not
    counted (``FlopCounterMode`` counts convs and matrix products)."""
    narrowed = sum(n * r for n, r in images_narrowed) * flops_full
    return 3.0 * (images_full * flops_full + images_pruned * flops_pruned + narrowed)


def phase_images(report: dict, iters: int, batch_size: int) -> dict:
    """The images a GDP phase of ``iters`` iterations trained at each width, from its
    export's ``report``: full width until the first shrink (all of them without one),
    each narrowed width of a gradual cut until the next (``images_narrowed``:
    ``[images, FLOPs ratio]``), the pruned network's after the last."""
    shrinks = report.get('shrinks') or ([[report['shrunk_after_iters'], None]]
                                        if report.get('shrunk_after_iters') else [])
    at = [s[0] for s in shrinks] or [iters]
    return dict(images_full=at[0] * batch_size,
                images_narrowed=[[(b - a) * batch_size, r]
                                 for a, b, (_, r) in zip(at, at[1:], shrinks)],
                images_pruned=(iters - at[-1]) * batch_size)


def _timed_train(cfg: Config, work_dir: str) -> dict:
    """``train`` with its wall time, and the iterations and batch size it ran (a
    resumed training counts the time of its last attempt only)."""
    t0 = time.time()
    checkpoint = train(cfg, work_dir)
    meta = torch.load(checkpoint, map_location='cpu', weights_only=False)['meta']
    return dict(checkpoint=checkpoint, train_seconds=time.time() - t0,
                train_iters=int(meta['iter']), batch_size=int(cfg.train_dataloader.batch_size))


def hms(seconds: float) -> str:
    s = int(seconds)
    return f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s'


def execute(runs: Sequence[Run], work_dir: str, run_fn: Callable[[Run], dict],
            estimate: Callable[[Run, List[dict]], float], log=print) -> List[str]:
    """Run every unfinished run with ``run_fn`` (which writes its ``result.json``),
    printing which run, the elapsed time and the ETA. A failing run is logged into its
    ``error.txt`` (removed when a later attempt succeeds) and the others go on. Returns
    the names of the failed runs."""
    t0, failed = time.time(), []
    todo = [r for r in runs if not osp.isfile(result_path(work_dir, r))]
    log(f'[compare] {len(runs) - len(todo)} of {len(runs)} runs finished earlier')
    for i, run in enumerate(todo):
        finished = load_results(work_dir, runs)
        eta = sum(estimate(r, finished) for r in todo[i:])
        log(f'[compare] run {i + 1}/{len(todo)}: {run.name} (elapsed {hms(time.time() - t0)}, '
            f'ETA {hms(eta)})')
        err = osp.join(osp.dirname(result_path(work_dir, run)), 'error.txt')
        try:
            run_fn(run)
            if osp.isfile(err):  # the failure of an earlier attempt, mended since
                os.remove(err)
        except Exception:  # noqa: BLE001 - one broken run must not stop the others
            failed.append(run.name)
            os.makedirs(osp.dirname(err), exist_ok=True)
            atomic_write(err, traceback.format_exc())
            log(f'[compare] run {run.name} failed: {err}')
    log(f'[compare] done in {hms(time.time() - t0)}; failed: {", ".join(failed) or "none"}')
    return failed


def metric_key(cfg: Config) -> str:
    """The test evaluator's mAP key, as mmengine logs it."""
    kind = cfg.val_evaluator.get('type')
    return {'VOCMetric': 'pascal_voc/mAP', 'CocoMetric': 'coco/bbox_mAP'}.get(kind, 'mAP')


class Comparison:
    """The stages of one comparison in ``work_dir`` (see the module docstring) on
    ``cfg``, a detector config whose ``train_dataloader``, ``val_dataloader`` (tuning
    split) and ``test_dataloader`` (report split) point at the data."""

    def __init__(self, cfg: Config, work_dir: str, settings: Settings, log=print):
        from mmengine.registry import init_default_scope
        self.cfg, self.settings, self.log = cfg, settings, log
        # the config's scope, as a Runner sets it: the models built outside a Runner
        # (Torch-Pruning's, random channels', the timed ones) look their nested types
        # (RTMDet's DetDataPreprocessor) up there, whichever run a process starts with
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        self.work_dir = osp.abspath(work_dir)
        self.input_size = tuple(gdp_config(cfg, 1.0, None, 1).model['input_size'])
        os.makedirs(self.work_dir, exist_ok=True)
        self.baseline_cfg = cfg if settings.baseline_seed is None else self.seeded(
            settings.baseline_seed)
        self.base_config = osp.join(self.work_dir, 'base_config.py')
        if not osp.isfile(self.base_config):
            cfg.dump(self.base_config)
        self._check_training_settings()
        self._base: Optional[dict] = None

    def _check_training_settings(self) -> None:
        """The settings that change what a run trains are the work directory's: a
        different value would mix runs trained two ways under one name."""
        s = self.settings
        want = dict(epochs=s.epochs, gdp_epochs=s.gdp_epochs, lr_factor=s.lr_factor,
                    distill_weight=s.distill_weight,
                    baseline_seed=self.baseline_cfg.get('randomness', {}).get('seed'))
        path = osp.join(self.work_dir, 'training_settings.json')
        if not osp.isfile(path):
            atomic_write(path, json.dumps(want, indent=2))
            return
        with open(path) as f:
            have = json.load(f)
        have = {**want, **{k: v for k, v in have.items() if k in want}}
        if have != want:
            from ..cli import UserError
            diff = ', '.join(f'{k} {have[k]} (asked {want[k]})' for k in want
                             if have[k] != want[k])
            raise UserError(f'{self.work_dir} holds runs trained with {diff}; give another '
                            '--work-dir for these settings')

    def seeded(self, seed: int) -> Config:
        cfg = copy.deepcopy(self.cfg)
        cfg.randomness = dict(seed=seed)
        return cfg

    # -- baseline ---------------------------------------------------------------------
    def baseline(self) -> dict:
        """The shared baseline: checkpoint, test mAP, FLOPs and params."""
        if self._base is not None:
            return self._base
        s, w = self.settings, self.work_dir
        start = s.baseline_checkpoint and osp.abspath(s.baseline_checkpoint)
        if not start:
            start = stage(w, 'baseline', lambda: _timed_train(
                self.baseline_cfg, osp.join(w, 'baseline')), self.log)['checkpoint']
        ckpt = start
        if s.patience > 0:
            ckpt = stage(w, 'converge', lambda: self._converge(start), self.log)['checkpoint']

        def measure():
            model = cm.build_model(self.base_config, ckpt)
            t0 = time.time()
            ev = evaluate(self.cfg, ckpt, osp.join(w, 'eval_baseline'))
            return dict(checkpoint=ckpt, mAP=ev['mAP'], params=cm.count_params(model),
                        flops=cm.counted_flops(model, self.input_size),
                        eval_seconds=time.time() - t0)

        self._base = stage(w, 'baseline_eval', measure, self.log)
        return self._base

    def _converge(self, start: str) -> dict:
        s, key = self.settings, metric_key(self.cfg)
        cfg = phase_schedule(copy.deepcopy(self.baseline_cfg), self.cfg,
                             s.converge_max_epochs, s.lr_factor)
        cfg.train_cfg.val_interval = 1
        cfg.load_from = start
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1,
                                            max_keep_ckpts=1, save_best=key, rule='greater')
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(
            type='EarlyStoppingHook', monitor=key, rule='greater', min_delta=0.0,
            patience=s.patience)]
        out = osp.join(self.work_dir, 'converge')
        last = train(cfg, out)
        best = sorted(glob.glob(osp.join(out, 'best_*.pth')), key=osp.getmtime)
        return dict(checkpoint=best[-1] if best else last, start=start)

    # -- one run ----------------------------------------------------------------------
    def run(self, run: Run) -> dict:
        """Prune, evaluate, train, evaluate, count; writes and returns result.json."""
        t0, s, base = time.time(), self.settings, self.baseline()
        d = osp.dirname(result_path(self.work_dir, run))
        cfg = self.seeded(run.seed)
        if run.method.budgeted:
            pruned = stage(d, 'prune', lambda: self._prune(run, cfg, d), self.log)
            before_eval = stage(d, 'eval_pruned', lambda: evaluate(
                self._file_cfg(pruned['config'], run.seed), pruned['checkpoint'],
                osp.join(d, 'eval_pruned')), self.log)
            before = before_eval['mAP']
        else:
            before = before_eval = None
            pruned = dict(config=self.base_config, checkpoint=base['checkpoint'], epochs=0)
        pcfg = self._file_cfg(pruned['config'], run.seed)
        epochs = run.method.train_epochs(s.epochs)
        left = epochs - pruned['epochs']
        ckpt = pruned['checkpoint']
        tuned = dict(train_seconds=0.0, train_iters=0, batch_size=0)
        if left > 0:
            fcfg = phase_schedule(copy.deepcopy(pcfg), cfg, left, s.lr_factor)
            fcfg.load_from = ckpt
            self._distilled(fcfg)
            tuned = stage(d, 'finetune', lambda: _timed_train(fcfg, osp.join(d, 'finetune')),
                          self.log)
            ckpt = tuned['checkpoint']
        after = (before_eval if left <= 0 else  # a GDP phase of all the epochs: no fine-tune
                 stage(d, 'eval', lambda: evaluate(pcfg, ckpt, osp.join(d, 'eval')), self.log))
        model = cm.build_model(pruned['config'], ckpt)
        weights = osp.join(d, 'final.pth')
        torch.save(dict(state_dict=model.state_dict()), weights)
        flops = cm.counted_flops(model, self.input_size)
        gdp = pruned.get('gdp_phase', dict(images_full=0, images_pruned=0, train_seconds=0.0))
        result = dict(run=run.name, method=run.method.name,
                      label=pruned.get('label', run.method.label),
                      seed=run.seed, budget=run.budget, budget_kind=run.method.budget_kind,
                      config=pruned['config'],
                      weights=weights, flops=flops, flops_ratio=flops / base['flops'],
                      params=cm.count_params(model), mAP=after['mAP'],
                      mAP_before_finetune=before, epochs=epochs,
                      train_seconds=gdp['train_seconds'] + tuned['train_seconds'],
                      train_flops=training_flops(
                          gdp['images_full'], base['flops'], gdp['images_pruned']
                          + tuned['train_iters'] * tuned['batch_size'], flops,
                          gdp.get('images_narrowed', ())),
                      seconds=time.time() - t0)
        # why the method could not run as it does elsewhere; the arguments of GDP's hook
        for key in ('note', 'gdp_hook'):
            if pruned.get(key):
                result[key] = pruned[key]
        atomic_write(result_path(self.work_dir, run), json.dumps(result, indent=2))
        for path in glob.glob(osp.join(d, '**', '*.pth'), recursive=True):
            if path not in (weights, pruned['checkpoint']):  # training checkpoints
                os.remove(path)
        return result

    def _distilled(self, cfg: Config) -> Config:
        """``cfg`` with the comparison's distillation from the baseline, if any."""
        if self.settings.distill_weight > 0:
            cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(
                type='DistillHook', teacher_config=self.base_config,
                teacher_checkpoint=self.baseline()['checkpoint'],
                weight=self.settings.distill_weight)]
        return cfg

    def _file_cfg(self, path: str, seed: int) -> Config:
        cfg = Config.fromfile(path)
        cfg.randomness = dict(seed=seed)
        return cfg

    def _prune(self, run: Run, cfg: Config, d: str) -> dict:
        """The pruned model of ``run`` as config + checkpoint, and the epochs it
        trained after the baseline."""
        m, budget, state = run.method, run.budget, load_state_dict(self.baseline()['checkpoint'])
        out = osp.join(d, 'pruned')
        if m.kind == 'gdp':
            hook = cm.gdp_hook_options(m, budget, self.settings.latency_backend)
            epochs = min(m.options.get('gdp_epochs', self.settings.gdp_epochs),
                         self.settings.epochs)
            gcfg = self._distilled(gdp_config(
                cfg, hook.pop('flops_target'), self.baseline()['checkpoint'], epochs,
                self.input_size, self.settings.lr_factor, **hook))
            args = cm.gdp_hook_args(next(h for h in gcfg.custom_hooks
                                         if h.get('type') == 'GDPHook'))
            phase = _timed_train(gcfg, osp.join(d, 'gdp'))
            config = glob.glob(osp.join(d, 'gdp', 'pruned', '*_pruned.py'))[0]
            with open(osp.join(d, 'gdp', 'pruned', 'prune_report.json')) as f:
                report = json.load(f)
            return dict(config=config, checkpoint=config[:-3] + '.pth', epochs=epochs,
                        gdp_hook=args, gdp_phase=dict(
                            train_seconds=phase['train_seconds'], **phase_images(
                                report, phase['train_iters'], phase['batch_size'])))
        if m.kind == 'random':
            mcfg, gated = self._gated(cfg, state)
            cm.prune_random(gated, budget, run.seed)
            return self._export_gated(mcfg, gated, out, m.name)
        try:
            model, reference, _ = cm.prune_torch_pruning(
                cfg, state, budget, self.input_size, m.options['importance'],
                m.options['global_pruning'], seed=run.seed)
        except Exception as e:  # noqa: BLE001 - its DependencyGraph cannot trace this one
            why = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}' if str(e) else \
                type(e).__name__
            self.log(f'[compare] {run.name}: Torch-Pruning cannot prune this detector ({why}); '
                     'its criterion on our channel groups instead')
            return self._prune_on_groups(run, cfg, state, out, why)
        config, checkpoint = cm.export_module(cfg, model, reference, out, m.name,
                                              self.input_size)
        return dict(config=config, checkpoint=checkpoint, epochs=0)

    def _prune_on_groups(self, run: Run, cfg: Config, state: dict, out: str, why: str) -> dict:
        """Torch-Pruning's criterion of ``run``'s method applied to our channel groups
        (:mod:`.group_importance`), exported as the GDP export is; the label says so."""
        from .group_importance import prune_groups
        m = run.method
        mcfg, gated = self._gated(cfg, state)
        grads = (cm.taylor_gradients(mcfg, gated, 8, run.seed)
                 if m.options['importance'] == 'taylor' else None)
        prune_groups(gated, run.budget, m.options['importance'], m.options['global_pruning'],
                     grads)
        return dict(self._export_gated(mcfg, gated, out, m.name),
                    label=f'{m.label} (its criterion on our channel groups)', note=why)

    def _gated(self, cfg: Config, state: dict):
        """``(config, model)``: the GDP model of the baseline, every gate open."""
        from mmdet.registry import MODELS
        mcfg = copy.deepcopy(cfg)
        mcfg.model = gdp_model_cfg(cfg, self.input_size)
        gated = MODELS.build(mcfg.model)
        gated.load_state_dict(state, strict=False)
        return mcfg, gated

    @staticmethod
    def _export_gated(mcfg: Config, gated, out: str, name: str) -> dict:
        """The export of ``gated``'s gates into ``out``, as a pruned model of no epochs."""
        paths = prune_and_export(mcfg, gated, out, name=name, force=True)[2]
        return dict(config=paths[0], checkpoint=paths[1], epochs=0)


def collect(comparison: Comparison, runs: Sequence[Run], skipped: List[dict],
            failed: Sequence[str] = ()) -> dict:
    """compare.json's content: settings, baseline, every finished run with its CPU
    latency (all models measured here, interleaved, on the same input), skipped
    methods and failed runs."""
    s, base = comparison.settings, dict(comparison.baseline())
    results = load_results(comparison.work_dir, runs)
    models = [(comparison.base_config, base['checkpoint'])]
    models += [(r['config'], r['weights']) for r in results]
    if s.latency_backend == 'torch':
        lat = cm.measure_latencies([cm.build_model(*m) for m in models],
                                   comparison.input_size, s.latency_repeats, s.threads)
    else:
        from ..deploy import split_images
        from .deploy_latency import deploy_all, deployed_latencies
        dirs = [osp.join(comparison.work_dir, 'deployed', name, s.latency_backend)
                for name in ['baseline'] + [r['run'] for r in results]]
        deploy_all(models, dirs, s.latency_backend, comparison.input_size)
        lat = deployed_latencies(dirs, s.threads, s.latency_repeats,
                                 split_images(comparison.cfg, s.latency_images))
    base['latency_ms'] = lat[0]
    for r, ms in zip(results, lat[1:]):
        r['latency_ms'], r['latency_ratio'] = ms, ms / lat[0]
    settings = dict(vars(s), input_size=list(comparison.input_size),
                    latency_images=None if s.latency_backend == 'torch' else s.latency_images,
                    test_split=_split_name(comparison.cfg.test_dataloader),
                    tuning_split=_split_name(comparison.cfg.val_dataloader),
                    train_split=_split_name(comparison.cfg.train_dataloader))
    data = dict(settings=settings, baseline=base, runs=results, skipped=skipped,
                failed=list(failed))
    data['summary'] = summarize(data)
    return data


def _split_name(loader) -> str:
    from ..deploy import split_file
    path = split_file(loader.dataset)
    inside = osp.abspath(path).startswith(osp.join(os.getcwd(), ''))
    return osp.relpath(path) if inside else path
