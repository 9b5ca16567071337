"""tools/gpu_check.py in its CPU mode: R50 RetinaNet plain vs GDP training iterations
(bf16 autocast), prune + export + verify; the CUDA-only parts are skipped and said so."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # two R50-FPN RetinaNets
def test_gpu_check_cpu_mode(tmp_path):
    out, js = tmp_path / 'RESULTS.md', tmp_path / 'check.json'
    out.write_text('# results\n\n## (a) kept\n\nold text\n')
    proc = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--device', 'cpu', '--size', '128', '160',
         '--repeats', '1', '--out', str(out), '--json', str(js)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2')))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(js.read_text())
    assert res['cuda_parts_skipped'] is True and res['sync'] is None
    assert res['device'] == 'cpu' and res['device_name'] == 'CPU'
    assert res['size'] == [128, 160] and res['batch'] == 2 and res['repeats'] == 1
    assert res['step_plain_s'] > 0 and res['step_gdp_s'] > 0
    assert res['overhead_ratio'] == pytest.approx(res['step_gdp_s'] / res['step_plain_s'])
    prune = res['prune']
    assert 0 < prune['flops_ratio'] < 0.9 and 0 < prune['params_ratio'] < 0.9
    assert prune['verify_max_rel_diff'] < 1e-3 and prune['device_max_rel_diff'] < 1e-3
    assert prune['verify_predict_max_diff'] < 1e-3 and prune['device_predict_max_diff'] < 1e-3
    assert prune['device_predict_dets'] > 0
    text = out.read_text()
    assert '## (a) kept\n\nold text' in text  # the other sections stay
    assert '## (g) GPU check' in text and 'not checked (no CUDA)' in text
    assert f"{res['overhead_ratio']:.3f}" in text
