"""tools/benchmark_compare.py and gdp_det.benchmark.compare*: the plan and its resume,
the tables from fake results, the independent FLOPs counter, and (slow) a tiny run."""
import importlib.util
import json
import os
import os.path as osp
import re

import pytest

from conftest import REPO, RETINANET_CFG
from gdp_det.benchmark import compare as C
from gdp_det.benchmark import compare_methods as cm
from gdp_det.benchmark.compare_summary import (interpolate_at, markdown, mean_std, pm,
                                              readme_lines, summarize)


def _finish(work, run, **values):
    path = C.result_path(work, run)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(run=run.name, method=run.method.name, seed=run.seed, **values), f)


def test_plan_orders_by_seed_and_skips_unavailable(monkeypatch):
    monkeypatch.setattr(C, 'unavailable', lambda m: 'not here' if m.name == 'gdp' else None)
    runs, skipped = C.make_plan(C.Settings(methods=['control', 'gdp', 'random'],
                                           budgets=[0.5, 0.3], seeds=[0, 1]))
    assert [r.name for r in runs] == ['control_s0', 'random_b0.5_s0', 'random_b0.3_s0',
                                      'control_s1', 'random_b0.5_s1', 'random_b0.3_s1']
    assert skipped == [dict(method='gdp', label='GDP, FLOPs budget', reason='not here')]
    with pytest.raises(ValueError, match='unknown method.*nope'):
        C.make_plan(C.Settings(methods=['nope']))


def test_gdp_variants_are_selectable_but_not_in_the_default_plan():
    from gdp_det.hooks import GDPHook
    import inspect
    names = [m.name for m in cm.METHODS + cm.GDP_VARIANTS]
    assert len(names) == len(set(names))
    assert not set(C.Settings().methods) & {m.name for m in cm.GDP_VARIANTS}
    runs, _ = C.make_plan(C.Settings(methods=['gdp_phase3'], budgets=[0.5], seeds=[0]))
    assert [r.name for r in runs] == ['gdp_phase3_b0.5_s0']
    hook_args = inspect.signature(GDPHook.__init__).parameters
    for m in cm.GDP_VARIANTS:  # every variant is a valid GDPHook call
        assert set(cm.gdp_hook_options(m, 0.5)) <= set(hook_args), m.name
        # and states what the defaults changed in issue 13, so it keeps its meaning
        assert 'grad_momentum' in m.options['hook'] and 'gdp_epochs' in m.options, m.name


def test_gdp_hook_args_are_every_argument_the_run_trained_with():
    """What a GDP run records: its own arguments, the rest at the hook's defaults."""
    from gdp_det.hooks import GDPHook
    import inspect
    params = inspect.signature(GDPHook.__init__).parameters
    by_name = {m.name: m for m in cm.METHODS + cm.GDP_VARIANTS}
    hook = dict(type='GDPHook', export=True,
                **cm.gdp_hook_options(by_name['gdp_cut_quarter'], 0.3))
    args = cm.gdp_hook_args(hook)
    assert set(args) == set(params) - {'self'}
    assert args['flops_target'] == 0.3 and args['min_channels'] == 0.1
    assert args['lambda_span'] == 0.25 and args['cut_rate_factor'] == 1.0  # the variant's
    assert args['gate_lr'] == params['gate_lr'].default  # left at the default
    assert json.loads(json.dumps(args)) == args  # stored in result.json as it is


def test_comparison_builds_models_in_its_configs_scope(tmp_path, monkeypatch):
    """A stream whose first run is not trained by a Runner (Torch-Pruning after GDP's
    runs finished in an earlier process) builds RTMDet, whose data preprocessor is mmdet's:
    the comparison sets its config's scope as a Runner would."""
    from collections import OrderedDict
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'toy', 'rtmdet_tiny_toyvoc.py'))
    # a process in which no Runner has set a scope yet
    monkeypatch.setattr(DefaultScope, '_instance_dict', OrderedDict())
    with pytest.raises(KeyError, match='DetDataPreprocessor'):  # the precondition
        MODELS.build(cfg.model)
    comparison = C.Comparison(cfg, str(tmp_path), C.Settings())
    assert type(cm.build_model(comparison.base_config)).__name__ == 'RTMDet'


def test_a_longer_fine_tune_prunes_as_its_method_does(tmp_path, monkeypatch):
    """``tp_l1_uniform_x2`` calls Torch-Pruning with L1 uniform's own options; an option
    it does not take would be an error that the fallback to our channel groups hides."""
    from mmengine.config import Config
    cfg = Config.fromfile(RETINANET_CFG)
    comparison = C.Comparison(cfg, str(tmp_path), C.Settings())
    monkeypatch.setattr(comparison, 'baseline', lambda: dict(checkpoint='base.pth'))
    monkeypatch.setattr(C, 'load_state_dict', lambda path: {})
    calls = []

    def prune(cfg, state, budget, input_size, *args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError('stop here')
    monkeypatch.setattr(cm, 'prune_torch_pruning', prune)
    monkeypatch.setattr(comparison, '_prune_on_groups', lambda *a: dict(fallback=a[-1]))
    for name in ('tp_l1_uniform_x2', 'tp_l1_uniform'):
        method, = C.select_methods([name])
        assert comparison._prune(C.Run(method, 0.3, 0), cfg, str(tmp_path)) == dict(
            fallback='RuntimeError: stop here')
    assert calls[0] == calls[1] == ((('l1', False), dict(seed=0)))


def test_execute_skips_finished_runs_and_survives_a_failure(tmp_path):
    work = str(tmp_path)
    runs, _ = C.make_plan(C.Settings(methods=['control', 'random'], budgets=[0.5],
                                     seeds=[0, 1]))
    _finish(work, runs[1], seconds=5.0)  # random_b0.5_s0 finished earlier
    calls, logs = [], []

    def run_fn(run):
        calls.append(run.name)
        if run.name == 'control_s1':
            raise RuntimeError('boom')
        _finish(work, run, seconds=7.0)

    failed = C.execute(runs, work, run_fn, lambda r, done: 100.0, logs.append)
    assert calls == ['control_s0', 'control_s1', 'random_b0.5_s1']
    assert failed == ['control_s1']
    assert 'boom' in open(osp.join(work, 'runs', 'control_s1', 'error.txt')).read()
    assert logs[0] == '[compare] 1 of 4 runs finished earlier'
    assert logs[1].startswith('[compare] run 1/3: control_s0 (elapsed 0h00m0')
    assert logs[1].endswith('ETA 0h05m00s)')  # 3 runs x 100 s
    calls.clear()
    assert C.execute(runs, work, run_fn, lambda r, done: 1.0, logs.append) == ['control_s1']
    assert calls == ['control_s1']  # only the failed one again
    calls.clear()
    assert C.execute(runs, work, lambda r: _finish(work, r), lambda r, done: 1.0,
                     logs.append) == []
    assert not osp.exists(osp.join(work, 'runs', 'control_s1', 'error.txt'))  # mended


def test_estimate_uses_finished_runs_of_the_method():
    s = C.Settings(epochs=3)
    run = C.make_plan(C.Settings(methods=['random'], budgets=[0.5], seeds=[0]))[0][0]
    assert C.estimate_seconds(run, s, 100, 1000, []) == pytest.approx(
        3 * 100 * C.TRAIN_S_PER_IMAGE + 2 * 1000 * C.EVAL_S_PER_IMAGE)
    done = [dict(method='random', seconds=10.0), dict(method='random', seconds=20.0),
            dict(method='control', seconds=99.0)]
    assert C.estimate_seconds(run, s, 100, 1000, done) == 15.0
    assert C.estimate_seconds(run, s, 100, 1000, done[2:]) == 99.0


def test_estimate_scales_by_the_measured_baseline(tmp_path):
    """Before any run finished, a detector costlier than the toy RetinaNet is estimated
    by its baseline's measured per-image times (Faster R-CNN's runs took about twice
    the toy RetinaNet's rough costs)."""
    def mark(name, **result):
        os.makedirs(tmp_path / name)
        (tmp_path / name / 'stage_done.json').write_text(json.dumps(result))
    work = str(tmp_path)
    assert C.cost_scale(work, 1000) == (1.0, 1.0)  # nothing measured yet
    mark('baseline_eval', checkpoint='b.pth', mAP=0.5,
         eval_seconds=3 * 1000 * C.BASELINE_EVAL_S_PER_IMAGE)
    assert C.cost_scale(work, 1000) == pytest.approx((3.0, 3.0))  # given baseline: eval's
    mark('baseline', checkpoint='b.pth', train_iters=100, batch_size=8,
         train_seconds=2 * 800 * C.BASELINE_TRAIN_S_PER_IMAGE)
    assert C.cost_scale(work, 1000) == pytest.approx((2.0, 3.0))
    run = C.make_plan(C.Settings(methods=['random'], budgets=[0.5], seeds=[0]))[0][0]
    s = C.Settings(epochs=3)
    assert C.estimate_seconds(run, s, 100, 1000, [], C.cost_scale(work, 1000)) == \
        pytest.approx(3 * 100 * C.TRAIN_S_PER_IMAGE * 2 + 2 * 1000 * C.EVAL_S_PER_IMAGE * 3)
    done = [dict(method='random', seconds=10.0)]  # a finished run's time wins
    assert C.estimate_seconds(run, s, 100, 1000, done, (2.0, 3.0)) == 10.0


def test_dry_run_prints_the_plan_and_what_finished(tmp_path, capsys):
    from tools.benchmark_compare import main
    argv = ['--dry-run', '--work-dir', str(tmp_path), '--methods', 'control', 'random',
            '--budgets', '0.5', '--seeds', '0', '--data', str(tmp_path / 'none'),
            '--val-data', str(tmp_path / 'none')]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '[compare] random_b0.5_s0' in out and '2 runs, 0 finished' in out
    assert main(argv + ['--jobs', '2']) == 0  # two streams: the longer run sets the time
    streams_out = capsys.readouterr().out

    def seconds(text, key):  # the first hms after ``key`` in ``text``
        h, m, s = re.search(re.escape(key) + r'\s+~?(\d+)h(\d+)m(\d+)s', text).groups()
        return 3600 * int(h) + 60 * int(m) + int(s)
    # one stream: the baseline, then both runs; two: the longer run beside the other
    left = 'estimated time left'
    assert abs(seconds(out, left) - seconds(streams_out, left)
               - seconds(out, 'control_s0')) <= 1
    assert seconds(out, 'control_s0') < seconds(out, 'random_b0.5_s0')
    runs, _ = C.make_plan(C.Settings(methods=['random'], budgets=[0.5], seeds=[0]))
    _finish(str(tmp_path), runs[0], seconds=60.0)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '2 runs, 1 finished' in out
    assert [ln.split()[-1] for ln in out.splitlines() if 'random_b0.5_s0' in ln] == ['done']
    assert not osp.exists(tmp_path / 'none')  # a dry run generates no data


def test_dry_run_prices_another_detector_by_a_probe_before_its_baseline(tmp_path, capsys,
                                                                        monkeypatch):
    """Before its baseline is trained, a detector other than the toy RetinaNet is priced by
    the probed ratio of its per-image costs; without a patience, no convergence stage."""
    from gdp_det.benchmark import cost_probe
    from tools.benchmark_compare import main
    monkeypatch.setattr(cost_probe, 'probe_cost_scale', lambda cfg, ref: (3.0, 2.0))
    argv = ['configs/toy/faster-rcnn_r18_fpn_toyvoc.py', '--dry-run', '--work-dir',
            str(tmp_path), '--methods', 'random', '--budgets', '0.5', '--seeds', '0',
            '--data', str(tmp_path / 'none'), '--val-data', str(tmp_path / 'none'),
            '--patience', '0']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the toy RetinaNet's x 3.00 (training), x 2.00 (evaluation), probed now" in out
    h, m, sec = map(int, re.search(r'baseline: up to (\d+)h(\d+)m(\d+)s', out).groups())
    assert 3600 * h + 60 * m + sec == int(16 * 480 * C.BASELINE_TRAIN_S_PER_IMAGE * 3.0)
    run = C.make_plan(C.Settings(methods=['random'], budgets=[0.5], seeds=[0]))[0][0]
    left = C.estimate_seconds(run, C.Settings(epochs=3), 480, 1000, [], (3.0, 2.0))
    assert C.hms(left) in out


def _fake_data(edit=None):
    """Three seeds of GDP and random channels at 0.5 and 0.3, the control, summarized
    after ``edit(runs)`` (if given) changed the runs."""
    runs = []
    gdp = {0.5: ([0.60, 0.62, 0.64], 10.0), 0.3: ([0.50, 0.52, 0.54], 6.0)}
    rnd = {0.5: ([0.50, 0.54, 0.58], 12.0), 0.3: ([0.40, 0.44, 0.48], 8.0)}
    for method, label, table in (('gdp', 'GDP, FLOPs budget', gdp),
                                 ('random', 'random channels, uniform', rnd)):
        for budget, (maps, ms) in table.items():
            runs += [dict(method=method, label=label, budget=budget, seed=s, mAP=a,
                          mAP_before_finetune=a - 0.1, latency_ms=ms, flops_ratio=budget,
                          params=1e6) for s, a in enumerate(maps)]
    runs += [dict(method='control', label='no pruning (control)', budget=None, seed=s,
                  mAP=0.70, mAP_before_finetune=None, latency_ms=20.0, flops_ratio=1.0,
                  params=2e6) for s in range(3)]
    settings = dict(test_split='val/test.txt', tuning_split='toy/test.txt', patience=3,
                    epochs=3, gdp_epochs=2, seeds=[0, 1, 2], input_size=[224, 224],
                    latency_repeats=20, threads=1)
    data = dict(settings=settings, runs=runs, baseline=dict(mAP=0.66, latency_ms=20.0,
                                                           params=2e6),
                skipped=[dict(method='tp_l1_uniform', label='Torch-Pruning L1, uniform',
                              reason='Torch-Pruning is not installed')])
    if edit is not None:
        edit(runs)
    data['summary'] = summarize(data)
    return data


def test_training_cost_counts_each_width_a_gdp_phase_trained_at():
    """180 iterations of 8 images: full width until the first shrink, a gradual cut's
    narrowed widths (FLOPs ratios 0.85, 0.72) until the next, the pruned one after."""
    from gdp_det.benchmark.compare import phase_images, training_flops
    gradual = phase_images(dict(shrinks=[[20, 0.85], [30, 0.72], [60, 0.5]],
                                shrunk_after_iters=20), 180, 8)
    assert gradual == dict(images_full=160, images_narrowed=[[80, 0.85], [240, 0.72]],
                           images_pruned=960)
    assert training_flops(flops_full=10.0, flops_pruned=5.0, **gradual) == pytest.approx(
        3 * (160 * 10 + 80 * 8.5 + 240 * 7.2 + 960 * 5))
    # one shrink (a report from before gradual cuts), and none
    assert phase_images(dict(shrunk_after_iters=69), 180, 8) == dict(
        images_full=552, images_narrowed=[], images_pruned=888)
    assert phase_images(dict(shrunk_after_iters=None), 180, 8) == dict(
        images_full=1440, images_narrowed=[], images_pruned=0)


def test_statistics_helpers():
    assert mean_std([0.6, 0.62, 0.64]) == pytest.approx((0.62, 0.02))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert pm([0.6, 0.62, 0.64]) == '0.620 ± 0.020'
    assert pm([0.5, None]) == '0.500' and pm([]) == '—'
    assert interpolate_at([(12, 0.5), (8, 0.4)], 10) == pytest.approx(0.45)
    assert interpolate_at([(12, 0.5), (8, 0.4)], 6) is None


def test_summary_means_differences_and_equal_latency():
    summary = _fake_data()['summary']
    rows = {(r['method'], r['budget']): r for r in summary['rows']}
    assert list(rows)[0] == ('control', None)  # control first, then budgets descending
    assert rows[('gdp', 0.5)]['mAP']['mean'] == pytest.approx(0.62)
    assert rows[('gdp', 0.5)]['mAP']['std'] == pytest.approx(0.02)
    assert rows[('random', 0.5)]['diff_to_reference'][0]['values'] == pytest.approx(
        [-0.10, -0.08, -0.06])
    control = rows[('control', None)]['diff_to_reference']
    assert [d['budget'] for d in control] == [0.5, 0.3]
    assert control[1]['values'] == pytest.approx([0.20, 0.18, 0.16])
    eq = {e['reference_budget']: e for e in summary['equal_latency']}
    # random at GDP's 10 ms: halfway between its 8 ms and 12 ms points, per seed
    assert eq[0.5]['mAP'] == pytest.approx([0.45, 0.49, 0.53])
    assert eq[0.5]['diff_to_reference'] == pytest.approx([-0.15, -0.13, -0.11])
    assert eq[0.3]['mAP'] == []  # 6 ms is outside random's 8-12 ms


def test_markdown_table_from_fake_results():
    text = '\n'.join(markdown(_fake_data(), 'python tools/benchmark_compare.py'))
    same = '0.500 ± 0.000 | {} ± 0.0 | 1.00 ± 0.00'
    assert f'| GDP, FLOPs budget | 0.5 | 3 | {same.format(10.0)} | 0.520 ± 0.020 | ' \
           '0.620 ± 0.020 |  |' in text
    assert f'| random channels, uniform | 0.5 | 3 | {same.format(12.0)} | 0.440 ± 0.040 | ' \
           '0.540 ± 0.040 | -0.080 ± 0.020 |' in text
    assert '| no pruning (control) | — | 3 | 1.000 ± 0.000 | 20.0 ± 0.0 | 2.00 ± 0.00 | — | ' \
           '0.700 ± 0.000 | 0.080 ± 0.020 (at 0.5); 0.180 ± 0.020 (at 0.3) |' in text
    assert '| random channels, uniform | 0.5 | 10.0 | 0.490 ± 0.040 | -0.130 ± 0.020 |' \
        in text
    assert '| random channels, uniform | 0.3 | 6.0 | — | — |' in text
    assert 'Skipped: Torch-Pruning L1, uniform (Torch-Pruning is not installed).' in text
    assert '| baseline (no extra training) | — | 1 | 1.000 | 20.0 | 2.00 | | 0.660 | |' in text
    assert 'Over their budget' not in text
    data = _fake_data()
    data['runs'][4]['flops_ratio'] = 0.32  # gdp at 0.3, seed 1
    data['runs'][6].update(budget_kind='latency', latency_ms=11.2)  # random at 0.5: 0.56
    data['runs'][7].update(budget_kind='latency', latency_ms=10.8)  # 0.54: within 0.05
    assert 'Over their budget by more than 0.01 (FLOPs) or 0.05 (measured latency): gdp at ' \
        '0.3 seed 1 (flops 0.320), random at 0.5 seed 0 (latency 0.560).' in \
        '\n'.join(markdown(data))
    assert 'training (min)' not in text  # no run recorded its training cost
    def costs(runs):  # GDP trains 90 s and 3e14 FLOPs per run, the others 60 s, 1e14
        for r in runs:
            gdp = r['method'] == 'gdp'
            r.update(train_seconds=90.0 if gdp else 60.0, train_flops=3e14 if gdp else 1e14)
    text = '\n'.join(markdown(_fake_data(costs)))
    assert '| FLOPs ratio | latency (ms) | params (M) | training (min) | training TFLOPs | ' \
        'mAP before fine-tune |' in text
    assert '| GDP, FLOPs budget | 0.5 | 3 | 0.500 ± 0.000 | 10.0 ± 0.0 | 1.00 ± 0.00 | ' \
        '1.5 ± 0.0 | 300.0 ± 0.0 | 0.520 ± 0.020 |' in text
    assert '| baseline (no extra training) | — | 1 | 1.000 | 20.0 | 2.00 | | | | 0.660 | |' \
        in text


def test_readme_summary_states_where_gdp_wins_and_loses():
    text = '\n'.join(readme_lines(_fake_data()))
    assert '| method | budget 0.5 | budget 0.3 | at 10.0 ms (GDP at 0.5) | at 6.0 ms (GDP at ' \
        '0.3) |' in text
    assert '| GDP, FLOPs budget | 0.620 ± 0.020 | 0.520 ± 0.020 | 0.620 ± 0.020 | ' \
        '0.520 ± 0.020 |' in text
    assert '| random channels, uniform | 0.540 ± 0.040 | 0.440 ± 0.040 | 0.490 ± 0.040 | — |' \
        in text
    assert '- At budget 0.5: GDP 0.620 ± 0.020 wins by 0.080 against random channels, ' \
        'uniform 0.540 ± 0.040; paired by seed +0.080 ± 0.020; seed std GDP 0.020, theirs ' \
        '0.040.' in text
    assert "- At GDP's 10.0 ms: GDP 0.620 ± 0.020 wins by 0.130 against random" in text
    assert "At GDP's 6.0 ms" not in text  # outside random's measured latencies
    assert '- No pruning, trained the same 3 epochs (control): 0.700 ± 0.000.' in text
    assert '- GDP at 0.3 before any fine-tune: 0.420 ± 0.020, -0.240 against the baseline.' \
        in text
    def edit(runs):
        for r, a in zip(runs[6:9], (0.63, 0.61, 0.65)):  # random at 0.5: above GDP
            r['mAP'] = a
        for r in runs[9:12]:  # random at 0.3 as a latency budget, measured at 8 ms
            r['budget_kind'] = 'latency'
    text = '\n'.join(readme_lines(_fake_data(edit)))
    assert 'GDP 0.620 ± 0.020 loses by 0.010 against random channels, uniform 0.630 ± ' \
        '0.020; paired by seed -0.010 ± 0.020, within the seed spread' in text
    # GDP's (6 ms, 10 ms) points of each seed interpolated at 8 ms: 0.55, 0.57, 0.59
    assert '- random channels, uniform 0.3: measured latency ratio 0.400 ± 0.000, mAP ' \
        '0.440 ± 0.040; GDP with a FLOPs budget at the same latencies: 0.570 ± 0.020.' in text


def test_a_fine_tune_given_more_epochs_is_compared_apart_not_ranked():
    """A method trained twice the epochs (GDP's training compute) is not the 'best other
    pruner' even where its mAP is higher; its own line states the FLOPs ratio."""
    from gdp_det.benchmark.compare_summary import overview_lines
    longer, same = C.select_methods(['tp_l1_uniform_x2', 'tp_l1_uniform'])
    assert longer.train_epochs(3) == 6 and same.train_epochs(3) == 3
    assert longer.label == 'Torch-Pruning L1, uniform, 2x the epochs'
    assert C.estimate_seconds(C.Run(longer, 0.3, 0), C.Settings(), 10, 0, []) == \
        pytest.approx(2 * C.estimate_seconds(C.Run(same, 0.3, 0), C.Settings(), 10, 0, []))

    def add_longer(runs):
        for r in runs:
            r['train_flops'] = 3e14 if r['method'] == 'gdp' else 1e14
        runs += [dict(method='tp_l1_uniform_x2', label='L1, 2x the epochs', budget=0.3,
                      seed=s, mAP=a, mAP_before_finetune=0.3, latency_ms=6.0,
                      flops_ratio=0.3, params=1e6, epochs=6, train_flops=2.4e14)
                 for s, a in enumerate((0.55, 0.57, 0.59))]
    data = _fake_data(add_longer)
    text = '\n'.join(readme_lines(data))
    assert '- At budget 0.3: GDP 0.520 ± 0.020 wins by 0.080 against random' in text
    assert "- At budget 0.3, against a fine-tune at 0.80x GDP's training FLOPs: GDP " \
        '0.520 ± 0.020 loses by 0.050 against L1, 2x the epochs 0.570 ± 0.020; paired by ' \
        'seed -0.050 ± 0.000' in text
    assert '| L1, 2x the epochs | — | 0.570 ± 0.020 |' in text
    data['settings']['extra'] = dict(config='configs/toy/faster-rcnn_r18_fpn_toyvoc.py')
    overview = '\n'.join(overview_lines([data]))
    assert 'L1, 2x the epochs' not in overview and ' below ' not in overview


def test_readme_verdict_compares_gdp_on_the_seeds_the_other_ran():
    """Merged parts need not run every method on every seed: GDP's mean over all its
    seeds (0.620) against random's one seed would say GDP wins; on seed 0 it loses."""
    def one_seed(runs):
        del runs[7:9]  # random at 0.5: seed 0 only
        runs[6]['mAP'] = 0.65
    text = '\n'.join(readme_lines(_fake_data(one_seed)))
    assert '- At budget 0.5 (seed 0, where both ran): GDP 0.600 loses by 0.050 against ' \
        'random channels, uniform 0.650.' in text
    assert '- At budget 0.3: GDP 0.520 ± 0.020 wins by 0.080' in text  # every seed: unnamed


def test_overview_across_detectors_states_where_gdp_is_behind():
    from gdp_det.benchmark.compare_summary import detector_name, overview_lines
    ahead = _fake_data()
    ahead['settings']['extra'] = dict(config='configs/toy/retinanet_r18_fpn_toyvoc.py')

    def behind_at_half(runs):  # random at 0.5: 0.63 / 0.60 / 0.66, spread 0.03 (GDP 0.02)
        for r, a in zip(runs[6:9], (0.63, 0.60, 0.66)):
            r['mAP'] = a
    behind = _fake_data(behind_at_half)
    behind['settings']['extra'] = dict(config='configs/toy/faster-rcnn_r18_fpn_toyvoc.py')
    assert detector_name(behind) == 'faster-rcnn_r18_fpn_toyvoc'
    text = '\n'.join(overview_lines([ahead, behind]))
    # GDP minus random, paired by seed: +0.10 / +0.08 / +0.06 at 0.5 in the first
    assert '| retinanet_r18_fpn_toyvoc | 0.5 | 3 | 0.620 ± 0.020 | random channels, uniform ' \
        '0.540 ± 0.040 | +0.080 ± 0.020 | random channels, uniform 0.490 ± 0.040 | ' \
        '+0.130 ± 0.020 |' in text
    assert '| retinanet_r18_fpn_toyvoc | 0.3 | 3 | 0.520 ± 0.020 | random channels, uniform ' \
        '0.440 ± 0.040 | +0.080 ± 0.020 | — | — |' in text
    assert '| faster-rcnn_r18_fpn_toyvoc | 0.5 | 3 | 0.620 ± 0.020 | random channels, ' \
        'uniform 0.630 ± 0.030 | -0.010 ± 0.026 |' in text
    assert '- faster-rcnn_r18_fpn_toyvoc at 0.5 of the FLOPs: GDP is 0.010 below random ' \
        'channels, uniform (paired by seed over 3 seed(s)).' in text
    assert text.count(' below ') == 1 and 'spread' not in text  # GDP's spreads are narrower
    behind['runs'][1]['mAP'] = 0.70  # GDP at 0.5, seed 1: ahead, spread 0.050 against 0.030
    text = '\n'.join(overview_lines([ahead, behind]))
    assert ' below ' not in text
    assert "faster-rcnn_r18_fpn_toyvoc at 0.5 of the FLOPs: the seed spread of GDP (0.050) " \
        "is wider than random channels, uniform's (0.030)." in text
    assert overview_lines([ahead])[-1] == '- GDP (FLOPs budget) is at or above the best ' \
        'other pruner at every budget above, paired by seed, with a seed spread no wider.'


def test_readme_overview_is_the_one_generated_from_the_detector_comparisons():
    """README's table across detectors says what the comparison JSONs hold: rerun
    `tools/benchmark_compare.py --collect-only --readme README.md` (or the make targets)."""
    from gdp_det.benchmark.compare_summary import overview_lines
    from tools.benchmark_compare import OVERVIEW_BLOCK, in_overview, overview_data
    assert in_overview(osp.join(REPO, 'benchmarks', 'compare_frcnn.json'))
    assert not in_overview(osp.join(REPO, 'benchmarks', 'compare_ort.json'))
    readme = open(osp.join(REPO, 'README.md')).read()
    block = readme.split(f'<!-- begin: {OVERVIEW_BLOCK} -->\n')[1].split(
        f'<!-- end: {OVERVIEW_BLOCK} -->')[0]
    assert block == '\n'.join(overview_lines(overview_data())) + '\n'


def test_each_comparison_json_has_its_readme_block_and_says_where_latency_is_timed():
    from tools.benchmark_compare import README_BLOCK, readme_block
    assert readme_block(osp.join(REPO, 'benchmarks', 'compare.json')) == README_BLOCK
    assert readme_block(osp.join(REPO, 'benchmarks', 'compare_ort.json')) == \
        'generated from benchmarks/compare_ort.json'
    data = _fake_data()
    assert 'measured CPU latency of GDP' in '\n'.join(readme_lines(data))
    data['settings'].update(latency_backend='onnxruntime', threads=1, patience=0)
    text = '\n'.join(readme_lines(data))
    assert 'measured latency deployed to onnxruntime (CPU, 1 thread(s), end to end)' in text
    assert 'converged' not in text  # patience 0: the start as it is
    assert '(baseline 20.0 ms), on one fixed random input.' in text  # before latency_images
    data['settings']['latency_images'] = 8
    assert '(baseline 20.0 ms), on the first 8 images of the test split, per image.' in \
        '\n'.join(readme_lines(data))


def test_deployed_models_are_timed_on_the_first_images_of_the_test_split(make_toy_cfg):
    from gdp_det.deploy import split_images
    cfg = make_toy_cfg()
    ds = cfg.test_dataloader.dataset
    ids = open(osp.join(ds.data_root, ds.ann_file)).read().split()
    paths = split_images(cfg, 3)
    assert [osp.basename(p) for p in paths] == [f'{i}.jpg' for i in ids[:3]]
    assert all(osp.isfile(p) for p in paths)
    assert len(split_images(cfg, 10 ** 6)) == len(ids)


def test_readme_has_a_block_for_each_detector_comparison():
    """`make compare-frcnn` / `make compare-rtmdet` pass `--readme README.md`, which
    refuses to start without the comparison's markers (they were missing: the targets
    failed at once)."""
    from gdp_det.pipeline.report import check_readme
    from tools.benchmark_compare import DETECTOR_COMPARISONS, readme_block
    for out in DETECTOR_COMPARISONS:
        check_readme(osp.join(REPO, 'README.md'), readme_block(osp.join(REPO, out)))


def test_readme_block_is_replaced_between_its_markers(tmp_path):
    from gdp_det.pipeline.report import replace_marked
    readme = tmp_path / 'README.md'
    readme.write_text('# x\n\n<!-- begin: cmp -->\nold\n<!-- end: cmp -->\nkept\n')
    replace_marked(str(readme), 'cmp', ['new', 'lines'])
    assert readme.read_text() == \
        '# x\n\n<!-- begin: cmp -->\nnew\nlines\n<!-- end: cmp -->\nkept\n'
    with pytest.raises(ValueError, match='no "<!-- begin: other -->"'):
        replace_marked(str(readme), 'other', ['x'])


def test_outputs_written_from_fake_results(tmp_path):
    pytest.importorskip('matplotlib')
    import argparse
    from tools.benchmark_compare import SECTION, write_outputs
    args = argparse.Namespace(out=str(tmp_path / 'compare.json'),
                              results=str(tmp_path / 'RESULTS.md'),
                              plot=str(tmp_path / 'pareto.png'), section=SECTION,
                              note=None, readme=None, tuning=False, part=False)
    from tools.benchmark_compare import OLD_SECTIONS
    (tmp_path / 'RESULTS.md').write_text(f'# benchmarks\n\n## (a) other\n\nkept\n\n'
                                         f'## {OLD_SECTIONS[0]}\n\nold table\n\n## (f) x\n\ny\n')
    write_outputs(_fake_data(), args, ['--seeds', '0', '1', '2'])
    data = json.load(open(args.out))
    assert len(data['runs']) == 15 and data['summary']['rows'][0]['method'] == 'control'
    md = open(args.results).read()
    assert '## (a) other\n\nkept' in md and f'## {SECTION}' in md and '## (f) x\n\ny' in md
    assert 'old table' not in md and OLD_SECTIONS[0] not in md
    assert 'Command: `python tools/benchmark_compare.py --seeds 0 1 2`' in md
    assert open(args.plot, 'rb').read(4) == b'\x89PNG'
    assert 'no default was tuned on it' in md
    args.section = '(q) timed in a runtime'  # another section on the report split
    write_outputs(_fake_data(), args, [])
    assert 'no default was tuned on it' in open(args.results).read().split('## (q)')[1]
    args.section, args.tuning = '(m) GDP variants', True  # a tuning run: its own section
    args.note = 'Rows labelled GDP: the defaults before.'
    write_outputs(_fake_data(), args, [])
    md = open(args.results).read()
    assert f'## {SECTION}' in md and '## (m) GDP variants' in md
    tuned = md.split('## (m) GDP variants')[1].split('\n## ')[0]
    assert 'the split the GDP defaults were chosen on' in tuned
    assert tuned.rstrip().endswith('Rows labelled GDP: the defaults before.')


def test_independent_flops_counter_agrees_with_flops_model():
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from gdp_det.cli import gdp_model_cfg
    from gdp_det.pruner import extract_pruned
    cfg = Config.fromfile(RETINANET_CFG)
    size = (64, 96)
    gated = MODELS.build(gdp_model_cfg(cfg, size))
    ratio = cm.prune_random(gated, 0.3, seed=0)
    assert 0.25 < ratio <= 0.3
    extract_pruned(gated, 1, 1)
    full = cm.counted_flops(MODELS.build(cfg.model), size)
    assert full > 1e8
    assert cm.counted_flops(gated, size) / full == pytest.approx(ratio, abs=2e-3)
    unpruned = MODELS.build(cfg.model)
    assert cm.count_params(gated) < cm.count_params(unpruned)
    slow, fast = cm.measure_latencies([unpruned, gated], size, repeats=9)
    assert slow > fast > 0


def test_first_within_finds_the_first_crossing_of_the_budget():
    model, ratio = cm.first_within(lambda x: (x, 1 - x), 0.3, hi=1.0, steps=20)
    assert ratio <= 0.3 and ratio == pytest.approx(0.3, abs=1e-5)
    # not monotone (0.2 at x = 0.6, back to 0.33 at 0.9): the scan finds the dip
    curve = lambda x: (x, 1 - 1.33 * x if x <= 0.6 else 0.2 + (x - 0.6) * 0.43)  # noqa: E731
    assert cm.first_within(curve, 0.3, hi=0.9, grid=3, steps=12)[0] == pytest.approx(
        0.7 / 1.33, abs=1e-3)
    with pytest.raises(RuntimeError, match='does not reach 0.1'):
        cm.first_within(curve, 0.1, hi=0.9, grid=3)


@pytest.mark.slow
def test_latency_budget_is_measured_in_the_comparisons_runtime():
    """In a comparison timed in a deployment runtime, GDP's latency budget is measured
    there too, with the widths that runtime runs fast; a FLOPs budget is unchanged."""
    from gdp_det.hooks import AUTO_CHANNEL_DIVISOR, GDPHook
    import inspect
    by_name = {m.name: m for m in cm.METHODS}
    hook = cm.gdp_hook_options(by_name['gdp_latency'], 0.5, 'onnxruntime')
    assert hook['latency_target'] == 0.5 and hook['flops_target'] is None
    assert hook['latency_backend'] == 'onnxruntime' and hook['channel_divisor'] == 'auto'
    assert AUTO_CHANNEL_DIVISOR['onnxruntime'] > 1
    assert set(hook) <= set(inspect.signature(GDPHook.__init__).parameters)
    assert 'latency_backend' not in cm.gdp_hook_options(by_name['gdp_latency'], 0.5)
    assert cm.gdp_hook_options(by_name['gdp'], 0.5, 'onnxruntime') == \
        cm.gdp_hook_options(by_name['gdp'], 0.5)


def test_tiny_comparison_end_to_end(toy_data, tmp_path, capsys):
    from tools.benchmark_compare import SECTION, main
    work, out = tmp_path / 'work', tmp_path / 'compare.json'
    argv = ['--work-dir', str(work), '--data', toy_data.root, '--val-data', toy_data.root,
            '--methods', 'control', 'random_x2', '--budgets', '0.5', '--seeds', '0',
            '--epochs', '1', '--gdp-epochs', '1', '--patience', '1',
            '--converge-max-epochs', '1', '--latency-repeats', '2', '--out', str(out),
            '--results', str(tmp_path / 'RESULTS.md'), '--plot', str(tmp_path / 'p.png'),
            '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False']
    assert main(argv + ['--jobs', '2']) == 0  # the two runs side by side, one thread each
    for i in range(2):  # each stream ran one of them, in its own process
        log = (work / 'streams' / f'stream{i}.log').read_text()
        assert '1 of 1 runs finished earlier' not in log and 'run 1/1' in log
    data = json.load(open(out))
    runs = {r['method']: r for r in data['runs']}
    assert set(runs) == {'control', 'random_x2'}
    assert runs['control']['flops_ratio'] == pytest.approx(1.0)
    assert 0.35 < runs['random_x2']['flops_ratio'] <= 0.5 + 1e-3
    assert runs['random_x2']['params'] < runs['control']['params'] == data['baseline']['params']
    for r in runs.values():
        assert 0 <= r['mAP'] <= 1 and r['latency_ms'] > 0
        # the training cost after the baseline: an epoch of the 16 toy images (two for
        # the fine-tune given twice the epochs), forward and backward counted as three
        # forwards of the trained (pruned) model
        assert r['train_seconds'] > 0
        assert r['train_flops'] == pytest.approx(3 * 16 * r['epochs'] * r['flops'])
    assert (runs['control']['epochs'], runs['random_x2']['epochs']) == (1, 2)
    assert 0 <= runs['random_x2']['mAP_before_finetune'] <= 1
    assert SECTION in open(tmp_path / 'RESULTS.md').read()
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: no run again
    assert '2 of 2 runs finished earlier' in capsys.readouterr().out
    if importlib.util.find_spec('mmdeploy') and importlib.util.find_spec('onnxruntime'):
        # the same models timed deployed end to end in ONNX Runtime instead of torch
        ort_out = tmp_path / 'compare_ort.json'
        assert main(argv + ['--collect-only', '--latency-backend', 'onnxruntime',
                            '--out', str(ort_out)]) == 0
        ort = json.load(open(ort_out))
        assert ort['settings']['latency_backend'] == 'onnxruntime'
        assert ort['baseline']['latency_ms'] > 0
        assert {r['method'] for r in ort['runs']} == {'control', 'random_x2'}
        for r in ort['runs']:
            deployed = work / 'deployed' / r['run'] / 'onnxruntime'
            assert (deployed / 'deploy.json').is_file() and r['latency_ms'] > 0
            assert json.load(open(deployed / 'deploy.json'))['input_dims'][2:] == \
                ort['settings']['input_size']
        assert 'deployed to onnxruntime' in open(tmp_path / 'RESULTS.md').read()
    # a method with no finished run: --collect-only reports what finished, runs nothing
    argv[argv.index('random_x2')] = 'gdp_momentum'
    assert main(argv + ['--collect-only']) == 0
    assert {r['method'] for r in json.load(open(out))['runs']} == {'control'}
    assert not (work / 'runs' / 'gdp_momentum_b0.5_s0').exists()


def test_taylor_gradients_need_no_runner_built_before(make_toy_cfg, monkeypatch):
    """The first run of a resumed comparison can be a Taylor run: its data must be
    built in the config's scope, not in mmengine's (no Runner has set one yet)."""
    from collections import OrderedDict
    import torch
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    cfg = make_toy_cfg(batch_size=2)
    model = MODELS.build(cfg.model)
    monkeypatch.setattr(DefaultScope, '_instance_dict', OrderedDict())
    grads = cm.taylor_gradients(cfg, model, batches=1, seed=0)
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_readme_comparison_is_the_one_generated_from_compare_json():
    """README's comparison summary says what benchmarks/compare.json holds: rerun
    `tools/benchmark_compare.py --collect-only --readme README.md` after new runs."""
    from tools.benchmark_compare import README_BLOCK
    data = json.load(open(osp.join(REPO, 'benchmarks', 'compare.json')))
    readme = open(osp.join(REPO, 'README.md')).read()
    block = readme.split(f'<!-- begin: {README_BLOCK} -->\n')[1].split(
        f'<!-- end: {README_BLOCK} -->')[0]
    assert block == '\n'.join(readme_lines(data)) + '\n'
    runs = {(r['method'], r['budget']) for r in data['runs']}
    assert {('gdp', 0.5), ('gdp', 0.3), ('control', None), ('random', 0.5)} <= runs
    assert all(len([r for r in data['runs'] if (r['method'], r['budget']) == k]) == 3
               for k in runs), 'every method and budget has its 3 seeds'


@pytest.mark.parametrize('name,methods', [
    ('compare_ort.json', {'gdp', 'gdp_latency', 'tp_l1_uniform'}),
    ('compare_frcnn_ort.json', {'gdp', 'tp_l1_uniform', 'tp_bn_uniform'})])
def test_readme_onnxruntime_comparison_is_the_one_generated_from_its_json(name, methods):
    """README's comparisons timed in ONNX Runtime say what their JSONs hold
    (benchmarks/compare_ort.json, and `make compare-part-ort`'s
    benchmarks/compare_frcnn_ort.json), and each timed its latency there."""
    from tools.benchmark_compare import readme_block
    path = osp.join(REPO, 'benchmarks', name)
    data = json.load(open(path))
    assert data['settings']['latency_backend'] == 'onnxruntime'
    block_name = readme_block(path)
    readme = open(osp.join(REPO, 'README.md')).read()
    block = readme.split(f'<!-- begin: {block_name} -->\n')[1].split(
        f'<!-- end: {block_name} -->')[0]
    assert block == '\n'.join(readme_lines(data)) + '\n'
    assert {(r['method'], r['budget']) for r in data['runs']} >= {
        (m, b) for m in methods for b in (0.5, 0.3)}


def test_stored_results_name_no_machine_paths():
    """Paths under the repository are stored relative to it (the committed results
    named the machine they ran on); other strings and paths elsewhere stay as they are."""
    from tools.benchmark_compare import REPO, repo_relative
    data = dict(runs=[dict(config=osp.join(REPO, 'work_dirs', 'c', 'base.py'), method='gdp')],
                baseline=dict(checkpoint='/elsewhere/b.pth'))
    assert repo_relative(data) == dict(runs=[dict(config='work_dirs/c/base.py', method='gdp')],
                                       baseline=dict(checkpoint='/elsewhere/b.pth'))
    for name in ('compare.json', 'tuning.json', 'compare_ort.json', 'compare_frcnn_ort.json'):
        text = open(osp.join(REPO, 'benchmarks', name)).read()
        assert '"/' not in text, name  # no absolute path in the committed results


def test_distillation_is_every_trainings_and_the_work_dirs(make_toy_cfg, tmp_path):
    """--distill adds the DistillHook (the baseline its teacher) to the trainings; a work
    directory keeps the settings its runs trained with and refuses others."""
    from gdp_det.cli import UserError
    cfg = make_toy_cfg()
    work = str(tmp_path / 'work')
    comparison = C.Comparison(cfg, work, C.Settings(distill_weight=0.5))
    comparison._base = dict(checkpoint='base.pth')
    hooks = comparison._distilled(cfg.copy()).custom_hooks
    assert dict(type='DistillHook', teacher_config=comparison.base_config,
                teacher_checkpoint='base.pth', weight=0.5) in hooks
    assert C.Comparison(cfg, work, C.Settings(distill_weight=0.5))  # the same: accepted
    with pytest.raises(UserError, match=r'distill_weight 0.5 \(asked 0.0\).*another --work-dir'):
        C.Comparison(cfg, work, C.Settings())
    plain = C.Comparison(cfg, str(tmp_path / 'plain'), C.Settings())
    assert plain._distilled(cfg.copy()).get('custom_hooks', []) == cfg.get('custom_hooks', [])
    data = _fake_data()
    data['settings']['distill_weight'] = 0.5
    assert '(`DistillHook`, weight 0.5)' in '\n'.join(markdown(data))


def test_cost_probe_times_each_detector_with_the_threads_asked(monkeypatch):
    """The probe's ratio is the detector's per-image seconds over the reference's, both
    timed with the threads asked; the caller's thread count is restored."""
    import torch
    from mmengine.config import Config
    from gdp_det.benchmark import cost_probe
    seen = []
    seconds = {}

    def fake_steps(cfg):  # a training and an inference step, with their fake times
        train, test = (lambda: None), (lambda: None)
        seconds[train], seconds[test] = (0.3, 0.1) if cfg.name == 'frcnn' else (0.1, 0.05)
        return train, test

    def fake_medians(setups, device, repeats):
        seen.append(torch.get_num_threads())
        return [seconds[setup()] for setup in setups]
    monkeypatch.setattr(cost_probe, 'steps', fake_steps)
    monkeypatch.setattr(cost_probe, 'interleaved_medians', fake_medians)
    threads = torch.get_num_threads()
    scale = cost_probe.probe_cost_scale(Config(dict(name='frcnn')), Config(dict(name='r')))
    assert scale == pytest.approx((3.0, 2.0)) and seen == [1]
    assert torch.get_num_threads() == threads
    monkeypatch.undo()
    # the real probe, in the config's default scope as a Runner would set it (RTMDet's
    # modules are mmdet's only)
    from mmengine.registry import DefaultScope
    rtmdet = Config.fromfile(osp.join(REPO, 'configs', 'toy', 'rtmdet_tiny_toyvoc.py'))
    with DefaultScope.overwrite_default_scope('mmengine'):
        train, test = cost_probe.probe_cost_scale(rtmdet, rtmdet, repeats=1)
    assert train > 0 and test > 0
