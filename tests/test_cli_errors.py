"""Every tool ends a failure on user input with one line on stderr, no traceback.

Each case runs a tool as its own process with the venv's python (as a user would),
all cases in parallel once per module; each parametrised test checks one of them:
exit code != 0, exactly one line on stderr of the form ``<tool>: error: ...`` naming
the problem, no traceback and no warning (the pkg_resources one included).
"""
import os
import os.path as osp
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CFG = osp.join(REPO, 'configs', 'toy', 'retinanet_r18_fpn_toyvoc.py')

# case id -> (tool, arguments, text the error line must contain); '{d}' is the
# case's directory with the input files made by ``inputs``
CASES = {
    'train-syntax': ('train.py', ['{d}/broken.py', '--work-dir', '{d}/w'], 'syntax'),
    'train-type': ('train.py', ['{d}/unknown.py', '--work-dir', '{d}/w'],
                   'NoSuchDetector is not in the'),
    'test-syntax': ('test.py', ['{d}/broken.py', '{d}/empty.pth'], 'syntax'),
    'test-type': ('test.py', ['{d}/unknown.py', '{d}/empty.pth', '--work-dir', '{d}/w'],
                  'NoSuchDetector is not in the'),
    'test-checkpoint': ('test.py', [TOY_CFG, '{d}/missing.pth'],
                        'checkpoint not found: {d}/missing.pth'),
    'prune-syntax': ('prune.py', ['{d}/broken.py', '--random-gates', '0.5', '--out-dir',
                                  '{d}/out'], 'syntax'),
    'prune-type': ('prune.py', ['{d}/unknown.py', '--random-gates', '0.5', '--out-dir',
                                '{d}/out'], 'NoSuchDetector is not in the'),
    'prune-checkpoint': ('prune.py', [TOY_CFG, '{d}/missing.pth', '--out-dir', '{d}/out'],
                         'checkpoint not found: {d}/missing.pth'),
    'analyze-syntax': ('analyze_groups.py', ['{d}/broken.py'], 'syntax'),
    'analyze-type': ('analyze_groups.py', ['{d}/unknown.py'], 'NoSuchDetector is not in the'),
    'pipeline-syntax': ('gdp_prune_pipeline.py', ['{d}/broken.py', '--work-dir', '{d}/w'],
                        'syntax'),
    'pipeline-type': ('gdp_prune_pipeline.py', ['{d}/unknown.py', '--work-dir', '{d}/w'],
                      'NoSuchDetector is not in the'),
    'pipeline-option': ('gdp_prune_pipeline.py', [TOY_CFG, '--work-dir', '{d}/w',
                                                  '--flops-target', '1.5'],
                        '--flops-target must be in (0, 1]'),
    'plot-json': ('plot_gdp.py', ['{d}/prune_report.json'], 'is not valid JSON'),
    'toy-out': ('make_toy_voc.py', ['--out', '{d}/empty.pth/toy'], 'cannot be written'),
    'toy-option': ('make_toy_voc.py', ['--out', '{d}/toy', '--num-train', '0'],
                   '--num-train must be at least 1'),
    'bench-option': ('benchmark_gdp.py', ['--only', 'x'], "invalid choice: 'x'"),
    'compare-syntax': ('benchmark_compare.py', ['{d}/broken.py', '--work-dir', '{d}/w',
                                                '--data', '{d}/toy', '--val-data', '{d}/val'],
                       'syntax'),
    'compare-option': ('benchmark_compare.py', ['--methods', 'gdp', 'nope'],
                       'unknown method(s) nope'),
}


def inputs(d):
    """The broken inputs: configs, an empty checkpoint and a cut-off JSON report."""
    with open(osp.join(d, 'broken.py'), 'w') as f:
        f.write(f"_base_ = '{TOY_CFG}'\nmodel = dict(type='RetinaNet'\n")
    with open(osp.join(d, 'unknown.py'), 'w') as f:
        f.write(f"_base_ = '{TOY_CFG}'\nmodel = dict(type='NoSuchDetector')\n")
    open(osp.join(d, 'empty.pth'), 'wb').close()
    with open(osp.join(d, 'prune_report.json'), 'w') as f:
        f.write('{"history": [[0, 1.0')


def run_case(case, root):
    tool, args, _ = CASES[case]
    d = osp.join(root, case)
    os.makedirs(d)
    inputs(d)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, osp.join(REPO, 'tools', tool)]
                          + [a.format(d=d) for a in args],
                          cwd=d, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cli'))
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(lambda c: run_case(c, root), CASES))), root


@pytest.mark.parametrize('case', list(CASES))
def test_one_line_error(results, case):
    procs, root = results
    proc = procs[case]
    tool, _, expected = CASES[case]
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert 'Traceback' not in proc.stderr and 'pkg_resources' not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f'{tool}: error: '), lines[0]
    assert expected.format(d=osp.join(root, case)) in lines[0], lines[0]
    if expected == 'syntax':
        assert 'broken.py' in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    """``--debug`` lets the exception through, with its traceback."""
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'plot_gdp.py'),
                           str(tmp_path / 'nothing'), '--debug'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'Traceback' in proc.stderr and 'UserError: no prune_report.json' in proc.stderr
