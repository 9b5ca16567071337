"""One comparison from parts whose seeds were trained apart, each from its own baseline.

A full comparison on a detector (a converged baseline, then every method at every budget
for three seeds) takes more CPU hours than one session has, and a session keeps nothing
but what it commits. So a session may train its own baseline and one seed's runs and
commit that part (``compare.json`` content with those seeds); ``merge(parts)`` makes one
comparison of them:

- every setting that changes what a run trains or how it is measured is the same in all
  parts (``ValueError`` naming the setting and the two parts otherwise), and so are the
  baseline's architecture (FLOPs, params);
- a GDP method at a budget trained with the same GDPHook arguments in every part that
  recorded them (``gdp_hook`` of its runs: the defaults may change between sessions);
- each seed comes from one part: runs are paired within a seed, hence within one
  baseline, and the spread over seeds includes the baselines' own training noise;
- latencies measured on different machines are not compared in ms: each run keeps its
  ratio to its own part's baseline, and its ``latency_ms`` becomes that ratio times the
  mean of the parts' baseline latencies (the measured value stays in
  ``latency_ms_measured``);
- ``baseline`` is the parts' mean (mAP, latency) with ``baselines`` listing each part's
  own; every run records its part's baseline mAP as ``baseline_mAP``.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Tuple

from .compare_summary import mean_std, summarize

# settings the parts must share: what a run trains, how it is evaluated and measured
SHARED_SETTINGS = ('epochs', 'gdp_epochs', 'lr_factor', 'distill_weight', 'patience',
                   'converge_max_epochs', 'baseline_checkpoint', 'latency_repeats',
                   'threads', 'latency_backend', 'latency_images', 'input_size', 'test_split',
                   'tuning_split', 'train_split', 'extra')


def _check_shared(parts: Sequence[Tuple[str, dict]]) -> None:
    (first, d0), rest = parts[0], parts[1:]
    for name, d in rest:
        for key in SHARED_SETTINGS:
            a, b = d0['settings'].get(key), d['settings'].get(key)
            if a != b:
                raise ValueError(f'{name} and {first} differ in setting {key!r} ({b!r} vs '
                                 f'{a!r}): merge only parts run with the same settings')
        for key in ('flops', 'params'):
            if d['baseline'][key] != d0['baseline'][key]:
                raise ValueError(f'the baselines of {name} and {first} differ in {key} '
                                 f'({d["baseline"][key]} vs {d0["baseline"][key]}): '
                                 'parts of one comparison prune the same detector')


def _check_gdp_hooks(parts: Sequence[Tuple[str, dict]]) -> None:
    first: Dict[Tuple[str, float], Tuple[str, dict]] = {}
    for name, d in parts:
        for r in d['runs']:
            if not r.get('gdp_hook'):  # collected before runs recorded it
                continue
            key = (r['method'], r['budget'])
            other, hook = first.setdefault(key, (name, r['gdp_hook']))
            diff = sorted(k for k in set(hook) | set(r['gdp_hook'])
                          if hook.get(k) != r['gdp_hook'].get(k))
            if diff:
                k = diff[0]
                raise ValueError(
                    f'{name} and {other} trained {r["method"]} at {r["budget"]:g} with other '
                    f'GDPHook arguments ({", ".join(diff)}; {k}: {r["gdp_hook"].get(k)!r} vs '
                    f'{hook.get(k)!r}): the defaults changed between them; rerun one part')


def _part_seeds(parts: Sequence[Tuple[str, dict]]) -> List[List[int]]:
    seen: Dict[int, str] = {}
    out = []
    for name, d in parts:
        seeds = sorted({r['seed'] for r in d['runs']})
        for s in seeds:
            if s in seen:
                raise ValueError(f'seed {s} is in both {seen[s]} and {name}: each seed must '
                                 'come from one baseline (drop one part, or rerun one with '
                                 'another --seeds)')
            seen[s] = name
        out.append(seeds)
    return out


def merge(parts: Sequence[Tuple[str, dict]]) -> dict:
    """One comparison (``compare.json`` content, summary included) of ``parts``, pairs of
    (name, content) as ``tools/benchmark_compare.py`` writes them; see the module
    docstring for what is checked and how latencies are put on one scale."""
    if not parts:
        raise ValueError('nothing to merge: give at least one comparison JSON')
    _check_shared(parts)
    _check_gdp_hooks(parts)
    seeds = _part_seeds(parts)
    latency = mean_std([d['baseline']['latency_ms'] for _, d in parts])[0]
    runs, baselines = [], []
    for (name, d), part_seeds in zip(parts, seeds):
        base = d['baseline']
        baselines.append(dict(source=name, seeds=part_seeds, mAP=base['mAP'],
                              latency_ms=base['latency_ms'],
                              checkpoint=base.get('checkpoint')))
        for r in d['runs']:
            r = dict(r, source=name, baseline_mAP=base['mAP'],
                     latency_ms_measured=r.get('latency_ms'))
            if r.get('latency_ratio') is not None:
                r['latency_ms'] = r['latency_ratio'] * latency
            runs.append(r)
    settings = copy.deepcopy(parts[0][1]['settings'])
    settings['seeds'] = sorted(s for part_seeds in seeds for s in part_seeds)
    settings['methods'] = list(dict.fromkeys(
        m for _, d in parts for m in d['settings'].get('methods', [])))
    settings['budgets'] = sorted({b for _, d in parts for b in d['settings']['budgets']},
                                 reverse=True)
    base_map, base_map_std = mean_std([b['mAP'] for b in baselines])
    baseline = dict(mAP=base_map, mAP_std=base_map_std, latency_ms=latency,
                    flops=parts[0][1]['baseline']['flops'],
                    params=parts[0][1]['baseline']['params'])
    skipped = list({s['method']: s for _, d in parts for s in d.get('skipped', [])}.values())
    failed = [f'{f} ({name})' for name, d in parts for f in d.get('failed', [])]
    data = dict(settings=settings, baseline=baseline, baselines=baselines, runs=runs,
                skipped=skipped, failed=failed)
    data['summary'] = summarize(data)
    return data
