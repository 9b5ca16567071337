"""The torchrun wrappers (tools/dist_*.sh) and tools/reproduce_voc.sh, run with a
stand-in Python that records what it is given."""
import os
import os.path as osp
import shutil
import subprocess

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# records its environment's OMP_NUM_THREADS and its arguments, one per line
FAKE_PYTHON = '#!/usr/bin/env bash\nprintf "%s\\n" "$OMP_NUM_THREADS" "$@" > "$ARGS_OUT"\n'


def _launch(tmp_path, script, *args, **env):
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    full_env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    full_env.update(PYTHON=str(fake), ARGS_OUT=str(tmp_path / 'args'), **env)
    subprocess.run(['bash', osp.join(REPO, 'tools', script), *args], env=full_env,
                   check=True, timeout=60)
    return (tmp_path / 'args').read_text().splitlines()


def test_dist_scripts_pass_arguments_as_given(tmp_path):
    """A config path and a ``--cfg-options`` value with spaces arrive as one argument
    each; each of the GPUS processes gets its share of the cores as OMP threads."""
    config, option = 'my configs/a b.py', 'work_dir=/tmp/a b'
    threads, *args = _launch(tmp_path, 'dist_train.sh', config, '2', '--cfg-options', option)
    assert args[-5:] == [config, '--launcher', 'pytorch', '--cfg-options', option]
    assert args[-6] == osp.join(REPO, 'tools', 'train.py')
    assert int(threads) == max(len(os.sched_getaffinity(0)) // 2, 1)
    threads, *args = _launch(tmp_path, 'dist_test.sh', config, 'ck pt.pth', '2',
                             OMP_NUM_THREADS='3')
    assert threads == '3'  # the user's setting is kept
    assert args[-4:] == [config, '--launcher', 'pytorch', 'ck pt.pth']
    assert '--nproc_per_node=2' in args


def test_reproduce_voc_says_when_the_zoo_lacks_a_checkpoint(tmp_path):
    """``--zoo-checkpoints`` without the detector's checkpoint: the script stops with
    its message (a failed ``ls`` under ``pipefail`` ended it silently)."""
    os.makedirs(tmp_path / 'tools')
    os.makedirs(tmp_path / 'zoo')
    script = str(tmp_path / 'tools' / 'reproduce_voc.sh')
    shutil.copy(osp.join(REPO, 'tools', 'reproduce_voc.sh'), script)
    for f in ('VOC2007/ImageSets/Main/trainval.txt', 'VOC2007/ImageSets/Main/test.txt',
              'VOC2012/ImageSets/Main/trainval.txt'):
        path = tmp_path / 'data' / 'VOCdevkit' / f
        os.makedirs(path.parent, exist_ok=True)
        path.write_text('')
    proc = subprocess.run(['bash', script, '2', '--zoo-checkpoints', str(tmp_path / 'zoo')],
                          env=dict(os.environ, COMPARE='0'), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f'reproduce_voc.sh: error: no faster-rcnn_r50_fpn_1x_voc0712*.pth in {tmp_path}/zoo '
        '(download it from the mmdet model zoo)']
