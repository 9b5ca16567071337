"""The deploy route (``gdp_det.deploy``, ``tools/deploy.py``): mmdeploy exports of the toy
detectors, baseline and GDP export, run in ONNX Runtime and OpenVINO, give mmdet's
detections on a fixed image; and the two ``compat`` patches mmdeploy needs on this stack,
each with a ``test_upstream_*`` that fails once upstream no longer needs it.

The models are randomly initialised, their BatchNorm statistics set from the test image
(:func:`_bn_calibrated`); their final classifiers' weights are multiplied by
a factor (:data:`SHARPEN`) so that the scores spread out instead of all sitting at the classifier's
prior (0.01), and the final score threshold lies halfway across a gap of at least
``10 * SCORE_TOL`` between consecutive scores (:func:`_threshold_in_gap`): no threshold
or top-k cut hangs on a float rounding, and the runtimes must reproduce mmdet's boxes and
scores to :data:`SCORE_TOL` / :data:`BOX_TOL` (matched order-free).
"""
import copy
import os.path as osp
import re

import numpy as np
import pytest
import torch

pytest.importorskip('mmdeploy', reason="the deploy extra: pip install -e '.[deploy]'")

from conftest import CONFIG_DIR, FASTER_RCNN_CFG, RETINANET_CFG  # noqa: E402

from gdp_det import compat, deploy  # noqa: E402

RTMDET_CFG = osp.join(CONFIG_DIR, 'rtmdet_tiny_toyvoc.py')
CONFIGS = {'retinanet': RETINANET_CFG, 'faster-rcnn': FASTER_RCNN_CFG,
           'rtmdet-tiny': RTMDET_CFG}
# factors tried on the final classifiers' weights until the scores spread (see toy_models)
SHARPEN = 10 ** np.arange(-3, 4.5, 0.5)
SCORE_TOL = 1e-4  # largest score difference of a matched detection
BOX_TOL = 0.05  # largest box corner difference (pixels, 224 px image) of a match
CLS_LAYER = re.compile(r'(retina_cls|rpn_cls|fc_cls|rtm_cls\.\d+)\.weight$')
CLASS_BOXES = re.compile(r'bbox_head\.fc_reg\.(weight|bias)$')
BOX_BIAS = re.compile(r'rtm_reg\.\d+\.bias$')


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def image(tmp_path_factory):
    """A fixed toy-VOC image (shapes on a textured background), resized to 128 x 128: the
    test pipeline scales it to 224 x 224, a multiple of 32, so there is no padding (into
    which mmdeploy's graph, clipping boxes to the padded input, lets proposals reach)."""
    import mmcv

    from gdp_det.datasets.toy_voc import make_toy_voc
    root = str(tmp_path_factory.mktemp('deploy_img'))
    make_toy_voc(root, num_train=1, num_val=1, seed=5, img_size=128)
    img_dir = osp.join(root, 'VOC2007', 'JPEGImages')
    test_id = open(osp.join(root, 'VOC2007', 'ImageSets', 'Main', 'test.txt')).read().split()[0]
    path = osp.join(root, 'square.png')
    mmcv.imwrite(mmcv.imresize(mmcv.imread(osp.join(img_dir, f'{test_id}.jpg')), (128, 128)),
                 path)
    return path


def _detector(model_cfg: dict) -> dict:
    while model_cfg.get('type') == 'GDPPrunedModule':
        model_cfg = model_cfg['module']
    return model_cfg


def _set_threshold(cfg, thr: float):
    """``cfg`` with the final score threshold ``thr``; and, for two-stage detectors, no RPN
    NMS (IoU threshold 1): mmdeploy's RPN suppresses proposals across FPN levels where
    mmdet's does it level by level, so only without it do both keep the same proposals."""
    test_cfg = _detector(cfg.model).test_cfg
    if 'rpn' in test_cfg:
        test_cfg.rpn.nms.iou_threshold = 1.0
    (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = thr
    return cfg


def _threshold_in_gap(cfg, ckpt: str, img: str):
    """``(threshold, gap)``: halfway across the widest gap between consecutive scores
    among mmdet's 8th to 40th best detections (threshold 0) on ``img``, so that 8 to 40
    detections pass and no score lies within ``gap / 2`` of the threshold."""
    scores = deploy.detections(deploy.torch_predict(_set_threshold(cfg.copy(), 0.0), ckpt,
                                                    img))[:, 4]
    window = np.sort(scores)[::-1][7:41]
    i = int(np.argmax(window[:-1] - window[1:]))
    return float(window[i] + window[i + 1]) / 2, float(window[i] - window[i + 1])


def _bn_calibrated(cfg, state: dict, img: str) -> dict:
    """``state`` with every BatchNorm's running statistics those of ``img`` (one predict
    in train-mode BN): a random init (RTMDet's head convs: std 0.01 behind BN) otherwise
    shrinks the features towards 0 layer by layer, until the classifiers see none."""
    from mmdet.apis import inference_detector, init_detector
    model = init_detector(cfg.copy(), None, device='cpu')
    model.load_state_dict(state)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
            m.momentum = 1.0
    inference_detector(model, img)
    return model.state_dict()


def _sharpened(state: dict, factor: float, path: str) -> str:
    """``state`` with the final classifiers' weights times ``factor`` (and RTMDet's box
    distances, 0 at init, 1.5 strides: neighbours overlap by IoU 0.5, not NMS's 0.6),
    saved to ``path``. Faster R-CNN's box regression gives every class the first class's box:
    mmdeploy's RoI head keeps each RoI's box of its top class for all its classes (an
    approximation of mmdeploy's), which is then exact."""
    state = {k: v * factor if CLS_LAYER.search(k) else v + 1.5 if BOX_BIAS.search(k) else
             v[:4].repeat(len(v) // 4, *[1] * (v.dim() - 1)) if CLASS_BOXES.search(k) else v
             for k, v in state.items()}
    assert sum(bool(CLS_LAYER.search(k)) for k in state) >= 1
    torch.save(dict(state_dict=state), path)
    return path


@pytest.fixture(scope='module')
def toy_models(tmp_path_factory, image):
    """``toy_models(name, variant)`` -> ``(Config, checkpoint)`` of a toy detector,
    ``variant`` 'baseline' (random init) or 'gdp' (``tools/prune.py --random-gates 0.5``
    export of it), final classifiers sharpened by the first factor of :data:`SHARPEN` that
    gives a gap of ``10 * SCORE_TOL`` in the scores on ``image``, the final score
    threshold in that gap (:func:`_threshold_in_gap`); built once per module."""
    from mmdet.utils import register_all_modules

    from gdp_det.cli import build_randomly_initialised, load_config
    from tools.prune import main as prune_main
    register_all_modules()
    cache = {}

    def get(name, variant):
        if (name, variant) in cache:
            return cache[name, variant]
        d = tmp_path_factory.mktemp(f'{name}_{variant}')
        if variant == 'baseline':
            cfg = load_config(CONFIGS[name])
            state = build_randomly_initialised(copy.deepcopy(cfg.model), seed=0).state_dict()
        else:
            assert prune_main([CONFIGS[name], '--random-gates', '0.5', '--seed', '0',
                               '--out-dir', str(d)]) == 0
            stem = osp.splitext(osp.basename(CONFIGS[name]))[0]
            cfg = load_config(str(d / f'{stem}_pruned.py'))
            state = torch.load(str(d / f'{stem}_pruned.pth'), map_location='cpu')
            state = state.get('state_dict', state)
        state = _bn_calibrated(cfg, state, image)
        for factor in SHARPEN:  # the first whose scores have a wide enough gap
            ckpt = _sharpened(state, factor, str(d / 'sharp.pth'))
            thr, gap = _threshold_in_gap(cfg, ckpt, image)
            if gap >= 10 * SCORE_TOL:  # no score crosses the threshold within SCORE_TOL
                break
        assert gap >= 10 * SCORE_TOL, (name, variant, factor, thr, gap)
        cache[name, variant] = (_set_threshold(cfg, thr), ckpt)
        return cache[name, variant]
    return get


def _check_matches(cfg, ckpt, backend, work_dir, image, dynamic=False, img=None, min_dets=5):
    deploy.export_model(cfg, ckpt, backend, str(work_dir), dynamic=dynamic, img=image)
    img = img or image
    ref = deploy.detections(deploy.torch_predict(cfg, ckpt, img))
    out = deploy.detections(deploy.runtime_predict(str(work_dir), img))
    thr = _detector(cfg.model).test_cfg.get('rcnn', _detector(cfg.model).test_cfg).score_thr
    found = deploy.match_detections(ref, out, SCORE_TOL, BOX_TOL, thr)
    max_per_img = _detector(cfg.model).test_cfg.get('rcnn', _detector(cfg.model).test_cfg)[
        'max_per_img']
    assert min_dets <= found['num_ref'] < max_per_img, found
    assert found['ok'], found
    assert found['matched'] >= found['num_ref'] - found['at_threshold'], found
    return found


# -- compat patches ----------------------------------------------------------------------
def test_upstream_mmdeploy_export_needs_dynamo_false(tmp_path, monkeypatch, toy_models):
    """mmdeploy 1.3.1's torch2onnx fails with torch's default (dynamo) exporter; when this
    fails, upstream is fixed and ``compat.patch_onnx_export_legacy_default`` can go."""
    from mmdeploy.apis import torch2onnx
    compat.apply_deploy()
    cfg, ckpt = toy_models('retinanet', 'baseline')
    dcfg = deploy.deploy_config_path('onnxruntime')
    img = np.zeros((64, 64, 3), np.uint8)
    patched = torch.onnx.export
    monkeypatch.setattr(torch.onnx, 'export', patched.__wrapped__)  # torch's own
    with pytest.raises(Exception):  # the patched export: test_retinanet_onnxruntime_...
        torch2onnx(img, str(tmp_path / 'bare'), 'end2end.onnx', dcfg, cfg.copy(), ckpt,
                   device='cpu')


def test_upstream_mmdeploy_roi_align_needs_cast_long():
    """mmdeploy 1.3.1's ONNX symbolic of RoIAlign imports ``_cast_Long`` from
    ``torch.onnx.symbolic_opset9``, which torch 2.x no longer has; when this fails,
    ``compat.patch_onnx_symbolic_cast_long`` can go."""
    import torch.onnx.symbolic_opset9 as opset9
    patched = getattr(opset9, '_cast_Long', None)
    assert patched is None or patched.__module__ == 'gdp_det.compat'
    compat.apply_deploy()
    assert opset9._cast_Long.__module__ == 'gdp_det.compat'


def test_upstream_mmdeploy_openvino_needs_new_api():
    """mmdeploy 1.3.1's OpenVINO wrapper imports ``openvino.inference_engine`` and its
    conversion runs the Model Optimizer ``mo``, both gone from OpenVINO 2025+; when this
    fails, ``compat.patch_mmdeploy_openvino_wrapper`` and ``deploy.onnx_to_openvino``
    can give way to mmdeploy's own."""
    pytest.importorskip('openvino')
    from mmdeploy.backend.openvino.onnx2openvino import get_mo_command
    from mmdeploy.backend.openvino.wrapper import OpenVINOWrapper
    with pytest.raises(ImportError):
        OpenVINOWrapper('end2end.xml')
    assert get_mo_command() == ''
    compat.apply_deploy()
    from mmdeploy.backend.openvino.backend_manager import OpenVINOManager
    assert OpenVINOManager.build_wrapper.__func__._gdp_patched


# -- runtime detections == mmdet's predict --------------------------------------------------
def test_retinanet_onnxruntime_matches_mmdet(tmp_path, toy_models, image):
    found = _check_matches(*toy_models('retinanet', 'baseline'), 'onnxruntime',
                           tmp_path / 'ort', image)
    assert found['max_score_diff'] <= SCORE_TOL and found['max_box_diff'] <= BOX_TOL


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
@pytest.mark.parametrize('variant', ['baseline', 'gdp'])
@pytest.mark.parametrize('name', ['retinanet', 'faster-rcnn', 'rtmdet-tiny'])
def test_runtime_matches_mmdet(name, variant, backend, tmp_path, toy_models, image):
    """Every toy detector, baseline and GDP export, in both runtimes: static shapes in ONNX
    Runtime, dynamic ones in OpenVINO."""
    if backend == 'openvino':
        pytest.importorskip('openvino')
    if (name, variant, backend) == ('retinanet', 'baseline', 'onnxruntime'):
        pytest.skip('test_retinanet_onnxruntime_matches_mmdet')
    _check_matches(*toy_models(name, variant), backend, tmp_path / 'deployed', image,
                   dynamic=backend == 'openvino')


def test_latency_session_runs_each_image_as_deployed(tmp_path, toy_models, image):
    """The benchmarks' latency sessions run the images they are given as the deployed
    model takes them (mmdeploy's pipeline and the model's normalisation): a real image's
    detections, not a random input's (on which a two-stage detector's proposals, and so
    its time, depend on the weights: same-width models differed by 10 %)."""
    cfg, ckpt = toy_models('retinanet', 'baseline')
    d = str(tmp_path / 'ort')
    deploy.export_model(cfg, ckpt, 'onnxruntime', d, img=image)
    session = deploy.RuntimeSession(d, 1, images=[image, image])
    assert len(session.inputs) == 2 and session.inputs[0].shape == (1, 3, 224, 224)
    ort = deploy.ort_session(osp.join(d, deploy.ONNX_FILE), 1)
    scores = ort.run(None, {'input': session.inputs[0]})[0][0, :, 4]
    expected = deploy.detections(deploy.runtime_predict(d, image))[:, 4]
    assert len(expected) >= 5
    np.testing.assert_allclose(np.sort(scores)[::-1][:len(expected)],
                               np.sort(expected)[::-1], atol=1e-6)
    noise = deploy.RuntimeSession(d, 1).inputs
    assert len(noise) == 1 and not np.allclose(noise[0], session.inputs[0])


@pytest.mark.slow
def test_dynamic_shapes_take_another_image_size(tmp_path, toy_models, image):
    """A dynamic export runs an image of another size than the export image."""
    import mmcv
    other = str(tmp_path / 'other.jpg')
    mmcv.imwrite(mmcv.imread(image)[:, :96], other)
    _check_matches(*toy_models('retinanet', 'gdp'), 'onnxruntime', tmp_path / 'dyn', image,
                   dynamic=True, img=other, min_dets=1)  # the threshold is image's


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_instance_segmentation_matches_mmdet(backend, tmp_path, image):
    """Mask R-CNN (mmdet's config with a ResNet-18, 224 px) through the instance-seg deploy
    config: boxes and scores as above, and each matched detection's mask agrees with
    mmdet's on at least 99 % of the pixels."""
    from mmdet.utils import register_all_modules

    from gdp_det.cli import build_randomly_initialised, load_config
    if backend == 'openvino':
        pytest.importorskip('openvino')
    register_all_modules()
    cfg = load_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    for t in cfg.test_pipeline:
        if t['type'] == 'Resize':
            t['scale'] = (224, 224)
    cfg.test_dataloader.dataset.pipeline = cfg.test_pipeline
    assert deploy.model_task(cfg.model) == 'instance-seg'
    state = build_randomly_initialised(copy.deepcopy(cfg.model), seed=0).state_dict()
    state = _bn_calibrated(cfg, state, image)
    for factor in SHARPEN:
        ckpt = _sharpened(state, factor, str(tmp_path / 'mask_rcnn.pth'))
        thr, gap = _threshold_in_gap(cfg, ckpt, image)
        if gap >= 10 * SCORE_TOL:
            break
    _set_threshold(cfg, thr)
    deploy.export_model(cfg, ckpt, backend, str(tmp_path / 'w'), img=image,
                        dynamic=backend == 'openvino')
    ref = deploy.torch_predict(cfg, ckpt, image)
    out = deploy.runtime_predict(str(tmp_path / 'w'), image)
    found = deploy.match_detections(deploy.detections(ref), deploy.detections(out),
                                    SCORE_TOL, BOX_TOL, thr)
    assert 5 <= found['num_ref'] and found['ok'], found
    for i, j in found['pairs']:
        a, b = ref.pred_instances.masks[i], out.pred_instances.masks[j]
        assert (a == b).float().mean() >= 0.99 and a.any(), (i, j)


# -- the tool ------------------------------------------------------------------------------
def test_tool_deploys_and_verifies(tmp_path, toy_models, image, capsys):
    from tools.deploy import main
    cfg, ckpt = toy_models('retinanet', 'gdp')
    cfg.dump(str(tmp_path / 'gdp.py'))
    work = tmp_path / 'work'
    assert main([str(tmp_path / 'gdp.py'), ckpt, '--backend', 'onnxruntime', '--work-dir',
                 str(work), '--img', image, '--verify', '--score-tol', str(SCORE_TOL),
                 '--box-tol', str(BOX_TOL)]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out and 'end2end.onnx' in out
    info = deploy.load_deployed(str(work))[2]
    assert info['backend'] == 'onnxruntime' and info['checkpoint'] == osp.abspath(ckpt)
    assert not [f for f in work.iterdir() if f.name.startswith('.tmp')]
    # an existing deployment is refused without --force
    assert main([str(tmp_path / 'gdp.py'), ckpt, '--backend', 'onnxruntime', '--work-dir',
                 str(work)]) == 2
    assert '--force' in capsys.readouterr().err


def test_tool_errors_name_the_fix(tmp_path, capsys, monkeypatch):
    from tools.deploy import main
    assert main([RETINANET_CFG, '--backend', 'tensorrt', '--work-dir', str(tmp_path)]) == 2
    assert 'invalid choice' in capsys.readouterr().err
    assert main([RETINANET_CFG, str(tmp_path / 'missing.pth'), '--backend', 'onnxruntime',
                 '--work-dir', str(tmp_path / 'w')]) == 2
    assert 'checkpoint not found' in capsys.readouterr().err
    monkeypatch.setitem(__import__('sys').modules, 'mmdeploy', None)
    assert main([RETINANET_CFG, '--backend', 'onnxruntime', '--work-dir', str(tmp_path)]) == 2
    assert "pip install -e '.[deploy]'" in capsys.readouterr().err


def test_shipped_deploy_configs():
    """Static and dynamic configs for detection and instance segmentation in both
    runtimes, in mmdeploy's layout; tasks picked from the model."""
    from mmengine.config import Config
    from mmdeploy.utils import get_backend, get_dynamic_axes, get_input_shape, get_task_type
    for task in deploy.TASKS:
        for backend in deploy.BACKENDS:
            for dynamic in (False, True):
                cfg = Config.fromfile(deploy.deploy_config_path(backend, task, dynamic))
                assert get_backend(cfg).value == backend
                assert get_task_type(cfg).value == 'ObjectDetection'  # masks: an output
                assert bool(get_dynamic_axes(cfg)) == dynamic
                assert get_input_shape(cfg) is None
                outputs = cfg.onnx_config.output_names
                assert outputs == ['dets', 'labels'] + (['masks'] if task != 'detection'
                                                        else [])
    mask_rcnn = dict(type='MaskRCNN', roi_head=dict(mask_head=dict(type='FCNMaskHead')))
    assert deploy.model_task(mask_rcnn) == 'instance-seg'
    assert deploy.model_task(dict(type='GDPPrunedModule', module=mask_rcnn)) == 'instance-seg'
    assert deploy.model_task(Config.fromfile(RETINANET_CFG).model) == 'detection'


# -- the end-to-end benchmark -------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_deploy_writes_json_and_section(tmp_path):
    """A smoke run of tools/benchmark_deploy.py on the toy RetinaNet: the baseline, a GDP
    export (--gdp-export) and the same share of every group cut at 0.5 of the FLOPs in
    ONNX Runtime, one thread; the JSON's numbers make the RESULTS section and the
    README block, and a rerun reuses the exports."""
    import json

    from tools.benchmark_deploy import README_BLOCK, SECTION, main
    from tools.prune import main as prune_main
    gdp = tmp_path / 'gdp'
    assert prune_main([RETINANET_CFG, '--random-gates', '0.3', '--out-dir', str(gdp)]) == 0
    out, js, readme = tmp_path / 'RESULTS.md', tmp_path / 'deploy.json', tmp_path / 'README.md'
    readme.write_text(f'x\n<!-- begin: {README_BLOCK} -->\n<!-- end: {README_BLOCK} -->\n')
    argv = ['--quick', '--backends', 'onnxruntime', '--threads', '1', '--budgets', '0.5',
            '--no-torch-pruning', '--gdp-export', 'toy-retinanet', 'GDP, keep 0.7', str(gdp),
            '--work-dir', str(tmp_path / 'work'), '--json', str(js), '--out', str(out),
            '--readme', str(readme)]
    assert main(argv) == 0
    model = json.load(open(js))['models']['toy-retinanet']
    rows = model['rows']
    assert [r['variant'] for r in rows] == ['baseline', 'GDP, keep 0.7',
                                            'same share of every group, FLOPs 0.5']
    base, gdp_row, uniform = rows
    assert base['speedup'] == 1 and base['flops_ratio'] == 1
    assert 0.4 < uniform['flops_ratio'] <= 0.5 and 0.3 < gdp_row['flops_ratio'] < 0.8
    assert uniform['speedup'] == pytest.approx(base['ms'] / uniform['ms'])
    assert set(model['profiles']) == {f"{r['variant']}, ONNX Runtime" for r in rows}
    assert all(abs(sum(p.values()) - 1) < 1e-6 for p in model['profiles'].values())
    text = out.read_text()
    assert f'## {SECTION}' in text
    assert f"| {uniform['ms']:.1f} | {uniform['speedup']:.2f}x |" in text
    assert f"| {uniform['flops_ratio']:.2f} | {uniform['speedup']:.2f}x |" in readme.read_text()
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / 'work').rglob('*.onnx')}
    assert len(mtimes) == 3
    assert main(argv) == 0
    assert {p: p.stat().st_mtime for p in (tmp_path / 'work').rglob('*.onnx')} == mtimes


def test_benchmark_deploy_readme_goals():
    """The README summary names each goal met or missed by how much, from the numbers."""
    from gdp_det.benchmark.deploy_latency import readme_lines
    row = dict(backend='onnxruntime', threads=1, flops_ratio=0.5)
    results = dict(models={'m': dict(size=[800, 1333], rows=[
        dict(row, variant='baseline', speedup=1.0, flops_ratio=1.0),
        dict(row, variant='u', speedup=1.5)])})
    lines = readme_lines(results, [('m', 'onnxruntime', 'u', 1.8),
                                   ('m', 'onnxruntime', 'u', 1.4),
                                   ('m', 'onnxruntime', 'gdp', 1.8)])
    assert '| m @800x1333 | u | 0.50 | 1.50x |' in lines
    assert lines[-3:] == ['- Goal 1.8x for m, u, ONNX Runtime, 1 thread: 1.50x, missed by 0.30x.',
                          '- Goal 1.4x for m, u, ONNX Runtime, 1 thread: 1.50x, met.',
                          '- Goal 1.8x for m, gdp, ONNX Runtime, 1 thread: not measured yet.']


def test_benchmark_deploy_refuses_a_readme_without_markers_before_measuring(tmp_path):
    """--readme pointing at a file without the block's markers stops at once, naming the
    markers to add (nothing is measured or written)."""
    from gdp_det.cli import UserError
    from tools.benchmark_deploy import README_BLOCK, main
    readme = tmp_path / 'README.md'
    readme.write_text('# no markers\n')
    with pytest.raises(UserError, match=f'no "<!-- begin: {README_BLOCK} -->"'):
        main.__wrapped__(['--readme', str(readme), '--json', str(tmp_path / 'd.json'),
                          '--out', str(tmp_path / 'R.md'), '--work-dir', str(tmp_path / 'w')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md']
