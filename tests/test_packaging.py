"""Packaging: ranges in pyproject (installing into an existing mmdet environment keeps
its torch), exact pins in one constraints file used by the setup script, and a
library import that does not pull in the report extras."""
import importlib.metadata
import os.path as osp
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from conftest import REPO

CONSTRAINTS = osp.join(REPO, 'requirements', 'constraints.txt')


def _pyproject():
    with open(osp.join(REPO, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)['project']


def _pins():
    pins = {}
    for line in open(CONSTRAINTS):
        line = line.split('#')[0].strip()
        if line:
            name, version = line.split('==')
            pins[name.strip()] = version.strip()
    return pins


def test_dependencies_are_ranges_not_pins():
    deps = [Requirement(d) for d in _pyproject()['dependencies']]
    assert not [str(d) for d in deps if any(s.operator in ('==', '===') for s in d.specifier)]
    by_name = {d.name: d for d in deps}
    for name in ('torch', 'mmengine', 'mmcv', 'mmdet'):
        assert by_name[name].specifier, f'{name} has no tested range'
    assert 'matplotlib' not in by_name
    assert _pyproject()['optional-dependencies']['report'] == ['matplotlib']


def test_constraints_pin_a_point_inside_the_ranges():
    """Every pin lies in the range pyproject declares (dependencies or an extra); a pin
    with no range is a package the set-up installs on its own with ``--no-deps``."""
    pins = _pins()
    project = _pyproject()
    declared = project['dependencies'] + [d for extra in project['optional-dependencies'].values()
                                          for d in extra]
    deps = {Requirement(d).name: Requirement(d) for d in declared}
    assert set(pins) >= {'torch', 'mmengine', 'mmcv', 'mmdet'}
    script = open(osp.join(REPO, 'tools', 'setup_env.sh')).read()
    for name, version in pins.items():
        if name in deps:
            assert deps[name].specifier.contains(version), (name, version, str(deps[name]))
        else:
            assert re.search(rf'--no-deps {re.escape(name)}\b', script), name


def test_installed_stack_is_the_pinned_one():
    for name, version in _pins().items():
        installed = importlib.metadata.version(name)
        assert installed.split('+')[0] == version, (name, installed, version)


def test_setup_script_installs_through_the_constraints_file():
    script = open(osp.join(REPO, 'tools', 'setup_env.sh')).read()
    assert 'requirements/constraints.txt' in script
    assert not re.search(r'"(torch|mmcv|mmdet|mmengine)==', script)  # no second set of pins
    assert len(re.findall(r'-c "\$CONSTRAINTS"', script)) >= 3


def test_import_does_not_pull_in_matplotlib():
    out = subprocess.run(
        [sys.executable, '-c', "import gdp_det, sys; assert 'matplotlib' not in sys.modules, "
         "[m for m in sys.modules if m.startswith('matplotlib')][:3]"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _imported_modules(path: str, package: str):
    """The ``gdp_det`` modules a source file imports (relative imports resolved)."""
    import ast
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split('.')
            if node.level:
                base = base[:len(base) - node.level + 1]
                yield '.'.join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def test_layers_import_only_downwards():
    """The core imports neither the main job nor the comparison; the main job does not
    import the comparison (a benchmark, not part of what a user's job runs)."""
    import glob
    layers = {'core': ('gdp_det/*.py', 'gdp_det/graph/*.py'),
              'pipeline': ('gdp_det/pipeline/*.py', )}
    above = {'core': ('gdp_det.pipeline', 'gdp_det.benchmark'),
             'pipeline': ('gdp_det.benchmark', )}
    for layer, patterns in layers.items():
        for pattern in patterns:
            for path in glob.glob(osp.join(REPO, pattern)):
                rel = osp.relpath(path, REPO)[:-3].replace('/', '.')
                package = rel if rel.endswith('__init__') else rel.rsplit('.', 1)[0]
                package = package.replace('.__init__', '')
                for name in _imported_modules(path, package):
                    assert not name.startswith(above[layer]), (rel, name)
