"""gdp_det.benchmark.compare_merge and ``tools/benchmark_compare.py --part / --merge``: a
comparison whose seeds were trained in separate sessions, each from its own baseline."""
import copy
import json

import pytest

from gdp_det.benchmark import compare as C
from gdp_det.benchmark.compare_merge import merge
from gdp_det.benchmark.compare_summary import markdown, overview_lines, readme_lines
from test_benchmark_compare import _fake_data


def _part(seeds, base_map, base_ms, slow=1.0):
    """The fake comparison's runs of ``seeds``, from a baseline of ``base_map`` measured at
    ``base_ms`` on a machine ``slow`` times slower than the fake data's."""
    data = _fake_data()
    data['runs'] = [dict(r, latency_ms=r['latency_ms'] * slow,
                         latency_ratio=r['latency_ms'] / 20.0)
                    for r in data['runs'] if r['seed'] in seeds]
    data['settings'].update(seeds=list(seeds), budgets=[0.5, 0.3], methods=['gdp', 'random'])
    data['baseline'] = dict(data['baseline'], mAP=base_map, latency_ms=base_ms * slow,
                            flops=5e9, checkpoint=f'base{seeds[0]}.pth')
    del data['summary']
    return data


def test_merge_pairs_within_a_seed_and_scales_latency_by_each_part_baseline():
    a, b = _part([0, 1], 0.66, 20.0), _part([2], 0.70, 20.0, slow=2.0)  # b: 2x slower CPU
    data = merge([('a.json', a), ('b.json', b)])
    assert data['settings']['seeds'] == [0, 1, 2]
    assert [p['seeds'] for p in data['baselines']] == [[0, 1], [2]]
    assert data['baseline']['latency_ms'] == pytest.approx(30.0)  # mean of 20 and 40
    assert data['baseline']['mAP'] == pytest.approx(0.68)
    for r in data['runs']:
        # the ratio to its own baseline, on the merged baseline's scale
        assert r['latency_ms'] == pytest.approx(r['latency_ratio'] * 30.0)
        assert r['baseline_mAP'] == (0.70 if r['seed'] == 2 else 0.66)
        assert r['source'] == ('b.json' if r['seed'] == 2 else 'a.json')
    # what part b measured on its machine: twice the fake data's ms
    assert [r['latency_ms_measured'] for r in data['runs'] if r['seed'] == 2] == \
        [r['latency_ms'] * 2 for r in _fake_data()['runs'] if r['seed'] == 2]
    rows = {(r['method'], r['budget']): r for r in data['summary']['rows']}
    # random minus GDP per seed: -0.10, -0.08, -0.06 at 0.5 (the fake data's)
    assert rows[('random', 0.5)]['diff_to_reference'][0]['values'] == pytest.approx(
        [-0.10, -0.08, -0.06])
    # GDP's models at 0.5 run at half the baseline: 15 ms on the merged scale
    assert rows[('gdp', 0.5)]['latency_ms']['mean'] == pytest.approx(15.0)
    md, rd = '\n'.join(markdown(data)), '\n'.join(readme_lines(data))
    assert "every seed's methods from that seed's own baseline (2 baselines" in md
    assert '| baseline (no extra training) | — | 2 | 1.000 | 30.0 |' in md
    assert '0.680 ± 0.028' in md and '(0.680 ± 0.028)' in rd
    # before fine-tune, each run against its own baseline: (0.50-0.66, 0.52-0.66, 0.54-0.70)
    assert 'GDP at 0.5 before any fine-tune: 0.520 ± 0.020, -0.153 against' in rd


def test_merge_checks_gdp_hook_arguments_only_where_both_parts_recorded_them():
    a, b, c = _part([0], 0.66, 20.0), _part([1], 0.70, 20.0), _part([2], 0.70, 20.0)
    for part, span in ((a, 0.25), (b, 0.25)):
        for r in part['runs']:
            r['gdp_hook'] = dict(lambda_span=span, min_channels=r['budget'])
    # a and b agree at each budget (their min_channels differ between budgets, not
    # between parts); c's runs were collected before runs recorded the hook
    data = merge([('a.json', a), ('b.json', b), ('c.json', c)])
    assert data['settings']['seeds'] == [0, 1, 2]
    for r in b['runs']:
        r['gdp_hook']['lambda_span'] = 0.5
    with pytest.raises(ValueError, match='lambda_span: 0.5 vs 0.25'):
        merge([('a.json', a), ('b.json', b), ('c.json', c)])


def test_overview_compares_spreads_of_the_change_from_each_seeds_own_baseline():
    """Baselines trained apart differ (0.60, 0.70, 0.80): GDP, 0.01 under each, has the
    wider spread of mAP (0.10 against 0.01) but the narrower of its change from its own
    baseline (0 against 0.09): the spread the method adds is what the overview compares."""
    parts = []
    for seed, base in ((0, 0.60), (1, 0.70), (2, 0.80)):
        part = _part([seed], base, 20.0)
        part['runs'] = [dict(r, mAP=base - 0.01 if r['method'] == 'gdp' else 0.65 + seed / 100)
                        for r in part['runs'] if r['budget'] == 0.5]
        parts.append((f'p{seed}.json', part))
    text = '\n'.join(overview_lines([merge(parts)]))
    assert 'spread' in text.splitlines()[-1] and 'below' not in text  # paired +0.03
    assert text.splitlines()[-1].startswith('- GDP (FLOPs budget) is at or above')
    for _, part in parts:  # now GDP's change varies by seed, the other's does not
        for r in part['runs']:
            r['mAP'] = (0.72 - part['baseline']['mAP'] / 10 if r['method'] == 'gdp'
                        else part['baseline']['mAP'] - 0.05)
    text = '\n'.join(overview_lines([merge(parts)]))
    assert "the seed spread of the mAP change from each seed's own baseline of GDP (0.110)" \
        in text


def test_one_part_reads_as_the_comparison_it_was():
    a = _part([0, 1, 2], 0.66, 20.0)
    merged = merge([('a.json', copy.deepcopy(a))])
    a['summary'] = merged['summary']
    assert markdown(merged) == markdown(a)  # one baseline: the same text and tables
    assert readme_lines(merged) == readme_lines(a)


@pytest.mark.parametrize('edit, match', [
    (lambda b: b['runs'].append(dict(b['runs'][0], seed=1)), 'seed 1 is in both a.json and '
     'b.json'),
    (lambda b: b['settings'].update(epochs=6), "differ in setting 'epochs'"),
    (lambda b: b['baseline'].update(flops=4e9), 'baselines of b.json and a.json differ in '
     'flops'),
    (lambda b: [r.update(gdp_hook=dict(lambda_span=0.5, cut_rate_factor=1.0))
                for r in b['runs'] if r['method'] == 'gdp'],
     r'b.json and a.json trained gdp at 0.5 with other GDPHook arguments \(cut_rate_factor, '
     r'lambda_span; cut_rate_factor: 1.0 vs 0.333'),
])
def test_merge_refuses_parts_that_are_not_one_comparison(edit, match):
    a, b = _part([0, 1], 0.66, 20.0), _part([2], 0.70, 20.0)
    for r in a['runs']:  # GDP's runs of part a trained with the gentle cut
        if r['method'] == 'gdp':
            r['gdp_hook'] = dict(lambda_span=0.25, cut_rate_factor=1 / 3)
    edit(b)
    with pytest.raises(ValueError, match=match):
        merge([('a.json', a), ('b.json', b)])
    with pytest.raises(ValueError, match='nothing to merge'):
        merge([])


def test_part_writes_only_its_json_and_merge_writes_the_comparison(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    from tools.benchmark_compare import main
    parts = []
    for name, seeds, base in (('s01.json', [0, 1], 0.66), ('s2.json', [2], 0.70)):
        path = tmp_path / name
        path.write_text(json.dumps(_part(seeds, base, 20.0)))
        parts.append(str(path))
    out = ['--out', str(tmp_path / 'compare.json'), '--results', str(tmp_path / 'R.md'),
           '--plot', str(tmp_path / 'p.png')]
    assert main(['--merge'] + parts + out) == 0
    data = json.load(open(tmp_path / 'compare.json'))
    assert [b['source'] for b in data['baselines']] == parts  # outside the repository
    assert len(data['runs']) == 15 and (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'
    assert "that seed's own baseline" in (tmp_path / 'R.md').read_text()
    capsys.readouterr()
    for argv, error in ((['configs/toy/retinanet_r18_fpn_toyvoc.py', '--merge'] + parts,
                         '--merge takes no CONFIG'),
                        (['--merge', str(tmp_path / 'nope.json')],
                         f'--merge part not found: {tmp_path / "nope.json"}'),
                        (['--merge', parts[1], parts[1]], 'seed 2 is in both')):
        assert main(argv + out) == 2 and error in capsys.readouterr().err


def test_write_outputs_of_a_part_is_only_its_json(tmp_path):
    import argparse
    from tools.benchmark_compare import SECTION, write_outputs
    args = argparse.Namespace(out=str(tmp_path / 'part.json'), results=str(tmp_path / 'R.md'),
                              plot=str(tmp_path / 'p.png'), section=SECTION, note=None,
                              readme=str(tmp_path / 'README.md'), tuning=False, part=True)
    write_outputs(_fake_data(), args, [])
    assert json.load(open(args.out))['runs'] and sorted(p.name for p in tmp_path.iterdir()) \
        == ['part.json']


def test_baseline_seed_seeds_the_baseline_and_is_the_work_dirs(make_toy_cfg, tmp_path):
    from gdp_det.cli import UserError
    cfg = make_toy_cfg()
    work = str(tmp_path / 'work')
    seeded = C.Comparison(cfg, work, C.Settings(baseline_seed=7))
    assert seeded.baseline_cfg.randomness == dict(seed=7)
    assert seeded.cfg.get('randomness') == cfg.get('randomness')  # the runs: their own seeds
    with pytest.raises(UserError, match=r'baseline_seed 7 \(asked 8\)'):
        C.Comparison(cfg, work, C.Settings(baseline_seed=8))
    assert C.Comparison(cfg, str(tmp_path / 'plain'), C.Settings()).baseline_cfg is cfg
