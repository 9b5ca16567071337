"""tools/gpu_check.py in its CPU mode: R50 RetinaNet plain vs GDP training iterations
(bf16 autocast), prune + export + verify, the GPU-path checks of issue 20; the CUDA-only
parts are skipped and said so."""
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
        cwd=REPO, capture_output=True, text=True, timeout=600,
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
    path = res['gpu_path']  # the checks of issue 20, bfloat16 alone on the CPU
    # wall-clock ratios of one repeat on a shared machine: measured, not judged here (the
    # fake CUDA clock of test_gpu_path checks what they compare)
    assert path['calibration']['ratio'] > 0 and path['calibration']['ratio_layer_timed'] > 0
    assert list(path['gate_grads']) == ['bfloat16'] and path['gate_grads']['bfloat16']['finite']
    assert path['graph_breaks']['gdp'] <= path['graph_breaks']['plain']
    assert prune['verified_on'] == 'cpu'
    dcn = path['no_cpu_kernel']  # on the CPU: the RoI layers opaque, the check skipped
    assert dcn['opaque'] == [f'roi_head.bbox_roi_extractor.roi_layers.{i}' for i in range(4)]
    assert 0 < dcn['flops_ratio'] < 0.9 and dcn['verified_on'] is None
    assert "module 'roi_head.bbox_roi_extractor.roi_layers.0' calls an op without a CPU " \
        'kernel' in dcn['verification_skipped']
    text = out.read_text()
    assert '## (a) kept\n\nold text' in text  # the other sections stay
    assert '## (g) GPU check' in text and 'not checked (no CUDA)' in text
    assert 'torch.compile graph breaks' in text
    assert f"{res['overhead_ratio']:.3f}" in text


def test_mmcv_without_ops_is_reported(monkeypatch):
    """An mmcv whose ops do not import (e.g. the lite build) stops the check with its
    message, not a traceback."""
    from tools.gpu_check import check_mmcv_cuda_ops
    monkeypatch.setitem(sys.modules, 'mmcv.ops', None)  # its import then fails
    with pytest.raises(SystemExit, match='gpu_check: mmcv has no CUDA ops here'):
        check_mmcv_cuda_ops()
