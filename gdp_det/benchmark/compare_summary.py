"""Tables and the Pareto plot of a comparison, from ``compare.json``'s content.

``summarize(data)`` groups the runs by method and budget: mean ± sample std over
seeds of mAP, measured latency, counted FLOPs ratio and params; the difference to
the reference method (GDP, FLOPs budget) paired by seed, as mean ± std of the
per-seed differences; and the equal-latency table: each method's mAP interpolated
(per seed, linearly between its budgets, not extrapolated beyond ``LATENCY_MATCH``) at
the mean latency of the reference's models at each budget. ``markdown(data)`` renders it
for RESULTS.md, ``readme_lines(data)`` the README's summary with its verdicts;
``plot_pareto(data, path)`` draws mAP against latency (matplotlib imported there).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare_methods import REFERENCE

# a run whose FLOPs ratio (latency budgets: measured latency ratio) is above its budget
# by more than this is flagged
BUDGET_SLACK = dict(flops=0.01, latency=0.05)
# a latency this close (relative) outside a method's measured range still matches the
# nearest end of it: two models of equal FLOPs measure about 1-2 % apart
LATENCY_MATCH = 0.03


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    xs = np.asarray(values, dtype=np.float64)
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def pm(values: Sequence[Optional[float]], digits: int = 3, signed: bool = False) -> str:
    """``mean ± std`` of the values that are not None (one value: itself; none: —); the
    mean with its sign when ``signed``."""
    xs = [v for v in values if v is not None]
    if not xs:
        return '—'
    m, s = mean_std(xs)
    mean = f'{m:+.{digits}f}' if signed else f'{m:.{digits}f}'
    return mean if len(xs) == 1 else f'{mean} ± {s:.{digits}f}'


def _by_seed(runs: Sequence[dict], key: str = 'mAP') -> Dict[int, float]:
    return {r['seed']: r[key] for r in runs if r.get(key) is not None}


def paired_differences(runs: Sequence[dict], reference: Sequence[dict],
                       key: str = 'mAP') -> List[float]:
    """``run[key] - reference run[key]`` for every seed both have."""
    a, b = _by_seed(runs, key), _by_seed(reference, key)
    return [a[s] - b[s] for s in sorted(a) if s in b]


def interpolate_at(points: Sequence[Tuple[float, float]], x: float,
                   slack: float = 0.0) -> Optional[float]:
    """y at ``x`` on the line through ``points`` (x, y) sorted by x; up to ``slack * x``
    outside their range the nearest end's y; None further out (never extrapolated)."""
    pts = sorted(points)
    if not pts or not pts[0][0] - slack * x <= x <= pts[-1][0] + slack * x:
        return None
    return float(np.interp(x, [p[0] for p in pts], [p[1] for p in pts]))


def _groups(runs: Sequence[dict]) -> Dict[Tuple[str, Optional[float]], List[dict]]:
    """The runs by (method, budget)."""
    groups: Dict[Tuple[str, Optional[float]], List[dict]] = {}
    for r in runs:
        groups.setdefault((r['method'], r['budget']), []).append(r)
    return groups


def _latency_points(groups, method: str) -> Dict[int, List[Tuple[float, float]]]:
    """Per seed, the (latency, mAP) points of ``method``'s runs with a budget."""
    per_seed: Dict[int, List[Tuple[float, float]]] = {}
    for (m, b), rs in groups.items():
        if m == method and b is not None:
            for r in rs:
                if r.get('latency_ms') is not None:
                    per_seed.setdefault(r['seed'], []).append((r['latency_ms'], r['mAP']))
    return per_seed


def summarize(data: dict) -> dict:
    """``rows`` (one per method and budget) and ``equal_latency`` (one per method and
    reference budget), with raw per-seed values and their ``mean ± std``."""
    groups = _groups(data['runs'])
    budgets = sorted({b for _, b in groups if b is not None}, reverse=True)
    rows = []
    for (method, budget), rs in groups.items():
        row = dict(method=method, label=rs[0]['label'], budget=budget, n=len(rs),
                   seeds=sorted(r['seed'] for r in rs))
        for key in ('mAP', 'mAP_before_finetune', 'latency_ms', 'flops_ratio', 'params',
                    'train_seconds', 'train_flops'):
            xs = [r[key] for r in rs if r.get(key) is not None]
            row[key] = dict(zip(('mean', 'std'), mean_std(xs)), n=len(xs)) if xs else None
        refs = ([groups.get((REFERENCE, b), []) for b in budgets] if budget is None
                else [groups.get((REFERENCE, budget), [])])
        row['diff_to_reference'] = [
            dict(budget=b, values=paired_differences(rs, ref)) for b, ref in
            zip(budgets if budget is None else [budget], refs) if method != REFERENCE]
        rows.append(row)
    rows.sort(key=lambda r: (r['budget'] is not None, -(r['budget'] or 0), r['method']))
    return dict(rows=rows, equal_latency=_equal_latency(groups, budgets))


def _equal_latency(groups, budgets) -> List[dict]:
    out = []
    methods = sorted({m for m, b in groups if b is not None and m != REFERENCE})
    for b in budgets:
        ref = groups.get((REFERENCE, b))
        if not ref or any(r.get('latency_ms') is None for r in ref):
            continue
        target = mean_std([r['latency_ms'] for r in ref])[0]
        ref_map = _by_seed(ref)
        for m in methods:
            at = {s: interpolate_at(p, target, LATENCY_MATCH)
                  for s, p in _latency_points(groups, m).items()}
            at = {s: v for s, v in at.items() if v is not None}
            out.append(dict(method=m, reference_budget=b, latency_ms=target,
                            seeds=sorted(at), mAP=[at[s] for s in sorted(at)],
                            diff_to_reference=[at[s] - ref_map[s] for s in sorted(at)
                                               if s in ref_map]))
    return out


def _budget(b: Optional[float]) -> str:
    return '—' if b is None else f'{b:g}'


def _stat(stat: Optional[dict], digits: int, scale: float = 1.0) -> str:
    if stat is None:
        return '—'
    m, s = stat['mean'] * scale, stat['std'] * scale
    return f'{m:.{digits}f}' if stat['n'] == 1 else f'{m:.{digits}f} ± {s:.{digits}f}'


def _budget_use(run: dict, base: dict) -> Tuple[dict, str, Optional[float]]:
    """The run, what its budget bounds and the ratio it reached (None: no budget)."""
    kind = run.get('budget_kind', 'flops')
    if run['budget'] is None:
        return run, kind, None
    return run, kind, (run['flops_ratio'] if kind == 'flops'
                       else run['latency_ms'] / base['latency_ms'])


def _from_baseline(data: dict, converged: bool = False) -> str:
    """Where the runs start: one shared baseline, or (merged parts) one per part."""
    kind = 'converged ' if converged else ''
    parts = data.get('baselines', [])
    if len(parts) < 2:
        return f'every method from the same {kind}baseline'
    return (f"every seed's methods from that seed's own {kind}baseline ({len(parts)} "
            "baselines, trained apart; latency: each run's ratio to its own baseline times "
            "their mean latency)")


def _baseline_map(data: dict) -> str:
    base = data['baseline']
    if len(data.get('baselines', [])) > 1:
        return f'{base["mAP"]:.3f} ± {base["mAP_std"]:.3f}'
    return f'{base["mAP"]:.3f}'


def _deployed_inputs(s: dict) -> str:
    """What the deployed models of a comparison with settings ``s`` were timed on."""
    n = s.get('latency_images')
    return (f'the first {n} images of the test split, per image' if n else
            'one fixed random input')


def _latency_note(s: dict) -> str:
    backend = s.get('latency_backend', 'torch')
    where = ('single-image CPU forwards in one process' if backend == 'torch' else
             f'single-image inferences on the CPU of each model deployed to {backend} '
             '(mmdeploy, image tensor in, detections out, NMS included) in one process, '
             f'on {_deployed_inputs(s)}')
    clock = ('process CPU time, `gdp_det.latency.forward_latencies`' if backend == 'torch'
             else 'process CPU time, `gdp_det.runtime_latency.runtime_medians`')
    return (f'median of {s["latency_repeats"]} interleaved {where}, {s["threads"]} '
            f'thread(s) (one: {clock})')


def markdown(data: dict, command: str = '', tuning: bool = False) -> List[str]:
    """The RESULTS.md section of a comparison (lines); ``tuning``: its test split is
    the one the GDP defaults are chosen on (a run of GDP variants)."""
    s, base, summary = data['settings'], data['baseline'], data['summary']
    labels = {r['method']: r['label'] for r in summary['rows']}
    split_note = ('the split the GDP defaults were chosen on' if tuning
                  else 'no default was tuned on it')
    lines = [f'Test split `{s["test_split"]}` ({split_note}), mAP@0.5; '
             f'tuning split `{s["tuning_split"]}` (baseline convergence: patience '
             f'{s["patience"]} epochs); {_from_baseline(data)} with '
             f'{s["epochs"]} training epochs after it (GDP: {s["gdp_epochs"]} in its phase) '
             f'on the same schedule; seeds {", ".join(map(str, s["seeds"]))}. FLOPs ratio: '
             f'`torch.utils.flop_counter.FlopCounterMode` on the tensor-mode forward at '
             f'{s["input_size"]}; latency: {_latency_note(s)}. '
             + (f'Every training after the baseline distils from it (`DistillHook`, weight '
                f'{s["distill_weight"]:g}). ' if s.get('distill_weight') else '') +
             f'Δ GDP: the run minus GDP (FLOPs budget) of the same seed, mean ± std over '
             f'seeds. mAP before fine-tune: the pruned model before the training after it '
             f'(GDP: at the end of its phase).' + (f' Command: `{command}`.' if command else ''),
             '']
    # the training cost after the baseline, where the runs recorded it
    cost = any(r.get('train_seconds') for r in data['runs'])
    if cost:
        lines[0] += (' Training after the baseline: its wall time and counted FLOPs '
                     '(forward + backward as three forwards of every training image at '
                     'the width the model had then; GDP: full width until its shrink).')
    head = ['method', 'budget', 'runs', 'FLOPs ratio', 'latency (ms)', 'params (M)']
    head += ['training (min)', 'training TFLOPs'] if cost else []
    head += ['mAP before fine-tune', 'mAP', 'Δ GDP']
    lines += ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|',
              f'| baseline (no extra training) | — | {len(data.get("baselines", [base]))} | '
              f'1.000 | {base["latency_ms"]:.1f} | {base["params"] / 1e6:.2f} | '
              + ('| | ' if cost else '') + f'| {_baseline_map(data)} | |']
    for r in summary['rows']:
        diffs = '; '.join((f'{pm(d["values"])} (at {d["budget"]:g})' if r['budget'] is None
                           else pm(d['values'])) for d in r['diff_to_reference']
                          if d['values'])
        diffs = '' if r['method'] == REFERENCE else diffs or '—'
        costs = (f'{_stat(r.get("train_seconds"), 1, 1 / 60)} | '
                 f'{_stat(r.get("train_flops"), 1, 1e-12)} | ') if cost else ''
        lines.append(f'| {r["label"]} | {_budget(r["budget"])} | {r["n"]} | '
                     f'{_stat(r["flops_ratio"], 3)} | {_stat(r["latency_ms"], 1)} | '
                     f'{_stat(r["params"], 2, 1e-6)} | {costs}'
                     f'{_stat(r["mAP_before_finetune"], 3)} | {_stat(r["mAP"], 3)} | {diffs} |')
    if any(e['mAP'] for e in summary['equal_latency']):
        lines += ['', "At equal latency: each method's mAP per seed, interpolated between its "
                  "budgets at the mean latency of GDP's models (within "
                  f"{LATENCY_MATCH:.0%} outside the method's range: its nearest end; — further "
                  "out).", '',
                  '| method | at GDP budget | latency (ms) | mAP | Δ GDP |',
                  '|---|---|---|---|---|']
        lines += [f'| {labels.get(e["method"], e["method"])} | {e["reference_budget"]:g} | '
                  f'{e["latency_ms"]:.1f} | {pm(e["mAP"])} | {pm(e["diff_to_reference"])} |'
                  for e in summary['equal_latency']]
    missed = [f'{r["method"]} at {r["budget"]:g} seed {r["seed"]} ({kind} {ratio:.3f})'
              for r, kind, ratio in map(_budget_use, data['runs'], [base] * len(data['runs']))
              if ratio is not None and ratio > r['budget'] + BUDGET_SLACK[kind]]
    if missed:
        lines.append(f'\nOver their budget by more than {BUDGET_SLACK["flops"]} (FLOPs) or '
                     f'{BUDGET_SLACK["latency"]} (measured latency): {", ".join(missed)}.')
    for sk in data.get('skipped', []):
        lines.append(f'\nSkipped: {sk["label"]} ({sk["reason"]}).')
    if data.get('failed'):
        lines.append(f'\nFailed (see their error.txt): {", ".join(data["failed"])}.')
    return lines


def _ours(method: str) -> bool:
    return method == REFERENCE or method.startswith(REFERENCE + '_')


def _longer(data: dict) -> set:
    """The methods that trained more epochs after the baseline than the comparison (a
    fine-tune given GDP's training compute): compared with GDP apart, not ranked with the
    methods trained as long as it."""
    return {r['method'] for r in data['runs']
            if r.get('epochs', 0) > data['settings']['epochs']}


def _rivals(data: dict, methods: Sequence[str]) -> List[str]:
    """The methods of ``methods`` that GDP is ranked against: not GDP's own, not the
    control, trained the same epochs."""
    longer = _longer(data)
    return [m for m in methods if not _ours(m) and m != 'control' and m not in longer]


def _verdict(name: str, ours: Dict[int, float], label: str, theirs: Dict[int, float]) -> str:
    """One sentence: GDP against another method in one column, both by seed, on the seeds
    both ran (named where GDP ran more: merged parts need not run every method on every
    seed, and means over different seeds' baselines are not comparable)."""
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return f'{name}: not enough runs.'
    mine, its = [ours[s] for s in seeds], [theirs[s] for s in seeds]
    d = mean_std(mine)[0] - mean_std(its)[0]
    verb = 'wins by' if d > 0 else 'loses by' if d < 0 else 'ties with'
    spread = ''
    if len(seeds) > 1:
        dm, ds = mean_std([a - b for a, b in zip(mine, its)])
        spread = (f'; paired by seed {dm:+.3f} ± {ds:.3f}'
                  + (', within the seed spread' if abs(dm) <= ds else ''))
        spread += f'; seed std GDP {mean_std(mine)[1]:.3f}, theirs {mean_std(its)[1]:.3f}'
    on = '' if seeds == sorted(ours) else \
        f' (seed{"s" * (len(seeds) > 1)} {", ".join(map(str, seeds))}, where both ran)'
    return f'{name}{on}: GDP {pm(mine)} {verb} {abs(d):.3f} against {label} {pm(its)}' \
           f'{spread}.'


def _best_at_budget(by, others: Sequence[str], budget: float) -> Optional[str]:
    """The method of ``others`` with the highest mean mAP at ``budget`` (None: no runs)."""
    have = [m for m in others if by.get((m, budget))]
    return max(have, key=lambda m: mean_std([r['mAP'] for r in by[(m, budget)]])[0],
               default=None)


def _best_at_latency(eq: dict, others: Sequence[str], budget: float) -> Optional[str]:
    """The method of ``others`` with the highest mean mAP interpolated at the latency of
    GDP's models at ``budget`` (``eq``: the equal-latency rows by (method, budget))."""
    have = [m for m in others if eq.get((m, budget), {}).get('mAP')]
    return max(have, key=lambda m: mean_std(eq[(m, budget)]['mAP'])[0], default=None)


def detector_name(data: dict) -> str:
    """The detector a comparison ran on: its config's file name without ``.py``."""
    config = data['settings'].get('extra', {}).get('config') or 'unknown config'
    return config.replace('\\', '/').rsplit('/', 1)[-1].rsplit('.py', 1)[0]


def _spread_values(data: dict, runs: Sequence[dict]) -> Tuple[List[float], str]:
    """The values whose spread over seeds is compared, and what they are: the runs' mAP,
    or, where the seeds' baselines were trained apart (a merge of parts), each run's mAP
    change from its own baseline, so that the baselines' own spread (the same for every
    method) does not hide the method's."""
    if len(data.get('baselines', ())) > 1:
        return ([r['mAP'] - r['baseline_mAP'] for r in runs],
                " of the mAP change from each seed's own baseline")
    return [r['mAP'] for r in runs], ''


def _shortfalls(where: str, diffs: Sequence[float], best_label: str,
                spreads: Tuple[List[float], List[float]], of: str = '') -> List[str]:
    """Where GDP's mean mAP is below the best other's (``diffs``: paired by seed) or the
    seed spread of its ``spreads`` values (GDP's, the best other's) is wider; ``of`` says
    what those values are."""
    ours, theirs = spreads
    out = []
    if diffs and mean_std(diffs)[0] < 0:
        out.append(f'{where}: GDP is {-mean_std(diffs)[0]:.3f} below {best_label} (paired by '
                   f'seed over {len(diffs)} seed(s)).')
    if len(ours) > 1 and len(theirs) > 1 and mean_std(ours)[1] > mean_std(theirs)[1]:
        out.append(f'{where}: the seed spread{of} of GDP ({mean_std(ours)[1]:.3f}) is wider '
                   f"than {best_label}'s ({mean_std(theirs)[1]:.3f}).")
    return out


def overview_lines(comparisons: Sequence[dict]) -> List[str]:
    """README's table across detectors (lines of markdown), one row per comparison (the
    content of its JSON) and budget: GDP's (FLOPs budget) mean ± std mAP, the
    best other pruner's at the same FLOPs and at the measured latency of GDP's models, the
    difference paired by seed; then a line for each budget where GDP's mean is below the
    best other's (by how much) or its seed spread is wider (of the mAP change from each
    seed's own baseline, where the seeds' baselines were trained apart)."""
    lines = ['| detector (config) | budget | seeds | GDP, FLOPs budget '
             '| best other pruner, same FLOPs | Δ paired '
             '| best other pruner, same latency | Δ paired |',
             '|---|---|---|---|---|---|---|---|']
    behind = []
    for data in comparisons:
        by = _groups(data['runs'])
        labels = {r['method']: r['label'] for r in data['runs']}
        others = _rivals(data, labels)
        eq = {(e['method'], e['reference_budget']): e
              for e in data['summary']['equal_latency']}
        name = detector_name(data)
        for b in sorted({r['budget'] for r in data['runs'] if r['budget'] is not None},
                        reverse=True):
            ours = by.get((REFERENCE, b), [])
            cells = []
            best = _best_at_budget(by, others, b)
            if best is None:
                cells += ['—', '—']
            else:
                theirs = [r['mAP'] for r in by[(best, b)]]
                d = paired_differences(ours, by[(best, b)])
                cells += [f'{labels[best]} {pm(theirs)}', pm(d, signed=True)]
                (mine, of), (its, _) = (_spread_values(data, ours),
                                        _spread_values(data, by[(best, b)]))
                behind += _shortfalls(f'{name} at {b:g} of the FLOPs', d, labels[best],
                                      (mine, its), of)
            m = _best_at_latency(eq, others, b)
            if m is None:
                cells += ['—', '—']
            else:
                cells += [f"{labels[m]} {pm(eq[(m, b)]['mAP'])}",
                          pm([-x for x in eq[(m, b)]['diff_to_reference']], signed=True)]
            lines.append(f'| {name} | {b:g} | {len({r["seed"] for r in ours})} | '
                         f"{pm([r['mAP'] for r in ours])} | " + ' | '.join(cells) + ' |')
    lines.append('')
    lines += ([f'- {x}' for x in behind] if behind else
              ['- GDP (FLOPs budget) is at or above the best other pruner at every budget '
               'above, paired by seed, with a seed spread no wider.'])
    return lines


def readme_lines(data: dict) -> List[str]:
    """README's summary of a comparison (lines of markdown): mean ± std mAP of every method
    at each budget and at the latencies of GDP's models, and for each column whether GDP's
    mean beats the best other pruner's (Δ paired by seed, the seed spreads), the control,
    GDP's model before any fine-tune against the baseline, and the latency budget's
    measured ratios. Generated, so that the README says what ``compare.json`` holds."""
    s, base, summary = data['settings'], data['baseline'], data['summary']
    budgets = sorted({r['budget'] for r in data['runs'] if r['budget'] is not None},
                     reverse=True)
    by = _groups(data['runs'])
    # from the runs (a stored summary may predate the seeds of its equal-latency rows)
    equal_latency = _equal_latency(by, budgets)
    eq = {(e['method'], e['reference_budget']): e for e in equal_latency}
    ref_ms = {e['reference_budget']: e['latency_ms'] for e in equal_latency}
    labels = {r['method']: r['label'] for r in data['runs']}
    methods = [m for m in dict.fromkeys(r['method'] for r in summary['rows'])
               if m != 'control']

    def maps(method, budget):
        return [r['mAP'] for r in by.get((method, budget), [])]

    def cells(method):
        at_budget = [pm(maps(method, b)) for b in budgets]
        at_latency = [pm(maps(method, b)) if method == REFERENCE else
                      pm(eq[(method, b)]['mAP']) if (method, b) in eq else '—'
                      for b in budgets if b in ref_ms]
        return at_budget + at_latency

    head = ([f'budget {b:g}' for b in budgets]
            + [f'at {ref_ms[b]:.1f} ms (GDP at {b:g})' for b in budgets if b in ref_ms])
    backend = s.get('latency_backend', 'torch')
    where = ('CPU latency' if backend == 'torch' else
             f'latency deployed to {backend} (CPU, {s["threads"]} thread(s), end to end)')
    lines = [f'Mean ± std mAP@0.5 over seeds {", ".join(map(str, s["seeds"]))} on the '
             f'held-out split `{s["test_split"]}`; '
             f'{_from_baseline(data, s.get("patience", 1) > 0)} ({_baseline_map(data)}) '
             f'with {s["epochs"]} training epochs after it. '
             'Budgets are FLOPs ratios (GDP, latency budget: ratios of the measured '
             "latency); the latency columns interpolate each method's per-seed mAP at the "
             f"measured {where} of GDP's models (baseline {base['latency_ms']:.1f} ms)"
             + ('.' if backend == 'torch' else f', on {_deployed_inputs(s)}.'), '',
             '| method | ' + ' | '.join(head) + ' |', '|---' * (len(head) + 1) + '|']
    lines += [f'| {labels[m]} | ' + ' | '.join(cells(m)) + ' |' for m in methods]
    lines.append('')
    others = _rivals(data, methods)
    ours = {b: _by_seed(by.get((REFERENCE, b), [])) for b in budgets}
    for b in budgets:
        best = _best_at_budget(by, others, b)
        if best is not None:
            lines.append('- ' + _verdict(f'At budget {b:g}', ours[b], labels[best],
                                         _by_seed(by[(best, b)])))
        m = _best_at_latency(eq, others, b)
        if m is not None:
            lines.append('- ' + _verdict(f"At GDP's {ref_ms[b]:.1f} ms", ours[b], labels[m],
                                         dict(zip(eq[(m, b)]['seeds'], eq[(m, b)]['mAP']))))
    for m in sorted(_longer(data)):
        for b in budgets:
            theirs = _by_seed(by.get((m, b), []))
            cost = [_by_seed(by.get((k, b), []), 'train_flops') for k in (m, REFERENCE)]
            seeds = sorted(set(theirs) & set(ours[b]) & set(cost[0]) & set(cost[1]))
            if seeds:
                ratio = sum(cost[0][x] for x in seeds) / sum(cost[1][x] for x in seeds)
                lines.append('- ' + _verdict(
                    f"At budget {b:g}, against a fine-tune at {ratio:.2f}x GDP's training "
                    'FLOPs', ours[b], labels[m], theirs))
    control = maps('control', None)
    if control:
        lines.append(f'- No pruning, trained the same {s["epochs"]} epochs (control): '
                     f'{pm(control)}.')
    for b in budgets:
        rs = [r for r in by.get((REFERENCE, b), []) if r.get('mAP_before_finetune') is not None]
        if rs:  # each run against its own baseline (merged parts: one per seed)
            drop = [r['mAP_before_finetune'] - r.get('baseline_mAP', base['mAP']) for r in rs]
            lines.append(f'- GDP at {b:g} before any fine-tune: '
                         f'{pm([r["mAP_before_finetune"] for r in rs])}, '
                         f'{mean_std(drop)[0]:+.3f} against the baseline.')
    for m in methods:
        for b in budgets:
            rs = [r for r in by.get((m, b), []) if r.get('budget_kind') == 'latency']
            if rs:
                ratios = [r['latency_ms'] / base['latency_ms'] for r in rs]
                flops_gdp = _latency_points(by, REFERENCE)
                at = [interpolate_at(flops_gdp.get(r['seed'], []), r['latency_ms'],
                                     LATENCY_MATCH) for r in rs]
                lines.append(f'- {labels[m]} {b:g}: measured latency ratio {pm(ratios)}, '
                             f'mAP {pm([r["mAP"] for r in rs])}; GDP with a FLOPs budget '
                             f'at the same latencies: {pm(at)}.')
    return lines


def plot_pareto(data: dict, path: str) -> None:
    """mAP against measured latency: one marker per run, a line through each method's
    per-budget means, the baseline as a star."""
    import matplotlib  # the optional ``report`` extra
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap('tab10')
    for i, row_method in enumerate(sorted({r['method'] for r in data['runs']})):
        rs = [r for r in data['runs'] if r['method'] == row_method]
        c = colors(i % 10)
        ax.scatter([r['latency_ms'] for r in rs], [r['mAP'] for r in rs], color=c, s=14,
                   alpha=0.6)
        means = sorted((mean_std([r['latency_ms'] for r in rs if r['budget'] == b])[0],
                        mean_std([r['mAP'] for r in rs if r['budget'] == b])[0])
                       for b in {r['budget'] for r in rs})
        ax.plot([m[0] for m in means], [m[1] for m in means], '-o', color=c, ms=4,
                label=rs[0]['label'])
    base = data['baseline']
    ax.plot([base['latency_ms']], [base['mAP']], '*', color='k', ms=12, label='baseline')
    ax.set_xlabel('CPU latency (ms, median, batch 1)')
    ax.set_ylabel('mAP (test split)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

