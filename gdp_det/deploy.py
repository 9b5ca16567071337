"""Deploy route: an mmdet config + checkpoint (a plain detector or a GDP export) to an
end-to-end ONNX Runtime or OpenVINO model through mmdeploy, and that model's detections.

:func:`export_model` runs mmdeploy's ``torch2onnx`` with a deploy config of
``configs/deploy/`` (post-processing and NMS in the graph; static or dynamic shapes,
detection or instance segmentation), then, for OpenVINO, converts the ONNX file with
``openvino.convert_model`` (mmdeploy 1.3's conversion runs the Model Optimizer ``mo``,
which OpenVINO 2025+ no longer ships). Everything lands in the work directory at once:
``end2end.onnx`` [``end2end.xml`` + ``.bin``], ``deploy_cfg.py``, ``model_cfg.py`` and,
last, ``deploy.json`` (what was exported, from what, with which versions).
:func:`build_runtime_model` loads such a directory as mmdeploy's ``End2EndModel`` (its
pre-processing, the runtime, its rescaling of the boxes) and :func:`runtime_predict` runs
it on an image; :func:`torch_predict` is mmdet's own ``inference_detector`` on the same
image, and :func:`match_detections` compares the two order-free.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .cli import UserError
from .files import publish, staging_dir

BACKENDS = ('onnxruntime', 'openvino')
TASKS = ('detection', 'instance-seg')
DEPLOY_INFO = 'deploy.json'
ONNX_FILE = 'end2end.onnx'
OPENVINO_FILE = 'end2end.xml'
RANDOM_INIT = 'random_init.pth'
# OpenVINO on the CPU in fp32 (its default on CPUs with bf16 units is bf16)
OPENVINO_CPU_CONFIG = {'INFERENCE_PRECISION_HINT': 'f32'}
CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'deploy')
_RUNTIME_MODULE = dict(onnxruntime='onnxruntime', openvino='openvino')


def require(backend: str) -> None:
    """Raise :class:`UserError` naming the missing package and the fix when mmdeploy,
    onnx or ``backend``'s runtime cannot be imported, or ``backend`` is unknown."""
    if backend not in BACKENDS:
        raise UserError(f'unknown backend {backend!r} (choose one of {", ".join(BACKENDS)})')
    for module in ('mmdeploy', 'onnx', _RUNTIME_MODULE[backend]):
        try:
            __import__(module)
        except ImportError as e:
            raise UserError(f'{module} is not installed or does not import ({e}) '
                            "(pip install -e '.[deploy]' && pip install --no-deps "
                            "mmdeploy==1.3.1)") from e


def _unwrapped(cfg) -> dict:
    """The mmdet config inside ``GDPPrunedModule`` wrappers of a GDP export ({} if none)."""
    while isinstance(cfg, dict) and cfg.get('type') == 'GDPPrunedModule':
        cfg = cfg['module']
    return cfg if isinstance(cfg, dict) else {}


def model_task(model_cfg: dict) -> str:
    """``'instance-seg'`` when the detector predicts masks (a ``mask_head`` in its RoI
    head, or a mask-predicting dense head such as SOLO / RTMDet-Ins / CondInst), else
    ``'detection'``."""
    model_cfg = _unwrapped(model_cfg)
    if _unwrapped(model_cfg.get('roi_head')).get('mask_head'):
        return 'instance-seg'
    head = str(_unwrapped(model_cfg.get('bbox_head') or model_cfg.get('mask_head')).get(
        'type', ''))
    if any(k in head for k in ('SOLO', 'Ins', 'CondInst', 'Mask')):
        return 'instance-seg'
    return 'detection'


def deploy_config_path(backend: str, task: str = 'detection', dynamic: bool = False) -> str:
    """The shipped deploy config ``configs/deploy/mmdet/TASK/TASK_BACKEND_SHAPE.py``."""
    if task not in TASKS:
        raise UserError(f'unknown task {task!r} (choose one of {", ".join(TASKS)})')
    shape = 'dynamic' if dynamic else 'static'
    path = osp.join(CONFIG_DIR, 'mmdet', task, f'{task}_{backend}_{shape}.py')
    if not osp.isfile(path):
        raise UserError(f'deploy config not found: {path} (run from a checkout of gdp-det, '
                        'or pass --deploy-cfg)')
    return path


def onnx_to_openvino(onnx_path: str, xml_path: str) -> str:
    """Convert ``onnx_path`` to OpenVINO IR ``xml_path`` (+ ``.bin``) in fp32, with the
    ONNX file's input shapes (static or dynamic) and tensor names. Returns ``xml_path``."""
    import openvino as ov
    model = ov.convert_model(onnx_path)
    ov.save_model(model, xml_path, compress_to_fp16=False)
    return xml_path


class OpenVINORuntimeWrapper(torch.nn.Module):
    """What mmdeploy's ``End2EndModel`` calls a backend wrapper, on ``openvino.Core``:
    ``forward({input name: tensor})`` returns ``{output name: tensor}`` and
    ``output_to_list`` orders them. Computes in fp32 (:data:`OPENVINO_CPU_CONFIG`: on CPUs
    with bf16 units OpenVINO's default is bf16, off by ~1e-3 in the scores); ``threads``
    sets ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all cores). Installed into
    mmdeploy by :func:`gdp_det.compat.patch_mmdeploy_openvino_wrapper`."""

    def __init__(self, ir_model_file: str, output_names: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None):
        super().__init__()
        import openvino as ov
        core = ov.Core()
        config = dict(OPENVINO_CPU_CONFIG)
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        self.compiled = core.compile_model(core.read_model(ir_model_file), 'CPU', config)
        self._output_names = list(output_names or [o.get_any_name()
                                                   for o in self.compiled.outputs])

    @property
    def output_names(self):
        return self._output_names

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        feed = {k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}
        result = self.compiled(feed)
        return {name: torch.from_numpy(np.array(result[name])) for name in self._output_names}

    def output_to_list(self, output_dict: Dict[str, torch.Tensor]):
        return [output_dict[name] for name in self._output_names]


def ort_session(model, threads: int, profile: bool = False):
    """An ONNX Runtime CPU session of ``model`` (a path or serialised ONNX bytes) with
    ``threads`` intra-op threads (0: all cores) and one inter-op thread, mmdeploy's custom
    ops loaded as its ORTWrapper loads them; ``profile``: ONNX Runtime's profiler on, its
    file written into the working directory."""
    import onnxruntime as ort
    from mmdeploy.backend.onnxruntime.init_plugins import get_ops_path
    so = ort.SessionOptions()
    if osp.exists(get_ops_path()):
        so.register_custom_ops_library(get_ops_path())
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = profile
    if profile:
        so.profile_file_prefix = 'ort_profile'
    return ort.InferenceSession(model, so, providers=['CPUExecutionProvider'])


def openvino_request(path: str, threads: int, perf_count: bool = False):
    """An OpenVINO CPU infer request of the model file ``path`` (IR or ONNX), in fp32
    (:data:`OPENVINO_CPU_CONFIG`) with the latency hint and ``threads`` threads (0: all
    cores); ``perf_count``: per-node performance counters on."""
    import openvino as ov
    config = dict(OPENVINO_CPU_CONFIG, PERFORMANCE_HINT='LATENCY', PERF_COUNT=perf_count)
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    return ov.Core().compile_model(path, 'CPU', config).create_infer_request()


class RuntimeSession:
    """One runtime session on the CPU of a deployed model (an :func:`export_model`
    directory), as the benchmarks time it: ``run()`` is one inference of each of
    ``inputs`` in turn, outputs fetched; ``profile()`` the share of time per op type,
    from a session of its own (the profilers slow what they time). ``inputs``: each of
    ``images`` (paths or BGR arrays) as the deployed model takes it
    (:func:`network_inputs`), so that the work that depends on the image (a two-stage
    detector's proposals, NMS) is a real image's; without ``images``, one fixed random
    input of the deployed input shape. ``threads`` 0: the runtime's default (all cores)."""

    def __init__(self, work_dir: str, threads: int, images: Sequence = ()):
        info = load_deployed(work_dir)[2]
        self.backend, self.work_dir, self.threads = info['backend'], work_dir, threads
        self.inputs = (network_inputs(work_dir, images) if len(images) else
                       [np.random.RandomState(0).randn(*info['input_dims']).astype(np.float32)])
        if self.backend == 'onnxruntime':
            sess = ort_session(osp.join(work_dir, ONNX_FILE), threads)
            self._infer = lambda x: sess.run(None, {'input': x})
        else:
            request = openvino_request(osp.join(work_dir, OPENVINO_FILE), threads)
            self._infer = lambda x: request.infer({0: x})

    def run(self) -> None:
        for x in self.inputs:
            self._infer(x)

    def profile(self, runs: int = 10) -> Dict[str, float]:
        """``{op type: share of the summed op time}`` over ``runs`` rounds of inferences
        (ONNX Runtime's profiler; OpenVINO's per-node performance counters), largest
        first."""
        totals: Dict[str, float] = {}
        if self.backend == 'onnxruntime':
            cwd = os.getcwd()
            os.chdir(self.work_dir)  # the profile file lands in the working directory
            try:
                sess = ort_session(ONNX_FILE, self.threads, profile=True)
                for _ in range(runs):
                    for x in self.inputs:
                        sess.run(None, {'input': x})
                trace_file = sess.end_profiling()
                trace = json.load(open(trace_file))
                os.remove(trace_file)
            finally:
                os.chdir(cwd)
            for ev in trace:
                if ev.get('cat') == 'Node' and ev['name'].endswith('_kernel_time'):
                    op = ev.get('args', {}).get('op_name', '?')
                    totals[op] = totals.get(op, 0) + ev['dur']
        else:
            request = openvino_request(osp.join(self.work_dir, OPENVINO_FILE), self.threads,
                                       perf_count=True)
            for _ in range(runs):
                for x in self.inputs:
                    request.infer({0: x})
                    for info in request.profiling_info:
                        totals[info.node_type] = (totals.get(info.node_type, 0)
                                                  + info.real_time.total_seconds())
        total = sum(totals.values()) or 1
        return {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _load_cfg(cfg):
    from mmengine.config import Config

    from .cli import load_config
    return cfg.copy() if isinstance(cfg, Config) else load_config(cfg)


def export_image(model_cfg, seed: int = 0) -> np.ndarray:
    """A fixed BGR ``uint8`` image of the size of the test pipeline's ``Resize`` scale
    (224 x 224 when it has none): uniform noise from ``seed``."""
    w, h = 224, 224
    for t in model_cfg.get('test_pipeline', None) or []:
        if t.get('type') == 'Resize' and t.get('scale'):
            scale = t['scale']
            w, h = (scale, scale) if isinstance(scale, int) else scale
    return np.random.RandomState(seed).randint(0, 256, (int(h), int(w), 3), dtype=np.uint8)


def split_file(dataset: dict) -> str:
    """The annotation file of a dataset config (``data_root`` joined with ``ann_file``),
    through its wrappers."""
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    return osp.join(dataset.get('data_root', ''), dataset.get('ann_file', ''))


def split_images(cfg, n: int) -> list:
    """Paths of the first ``n`` images of ``cfg``'s test split (none when ``cfg`` has no
    test split or its annotation file is not on this machine)."""
    ds = (cfg.get('test_dataloader') or {}).get('dataset') if cfg is not None else None
    if not ds or not n:
        return []
    if not osp.exists(split_file(ds)):
        return []
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        dataset = DATASETS.build(copy.deepcopy(ds))
    return [dataset.get_data_info(i)['img_path'] for i in range(min(n, len(dataset)))]


def _read_image(img) -> np.ndarray:
    if isinstance(img, np.ndarray):
        return img
    import mmcv
    if not osp.isfile(img):
        raise UserError(f'image not found: {img} (check the path)')
    return mmcv.imread(img)


def check_work_dir(work_dir: str, force: bool) -> None:
    """Refuse a work directory that already holds a deployed model unless ``force``."""
    from .cli import check_writable_dir
    check_writable_dir(work_dir, 'work directory')
    if not force and osp.exists(osp.join(work_dir, DEPLOY_INFO)):
        raise UserError(f'{work_dir} already holds a deployed model ({DEPLOY_INFO}); pass '
                        '--force to replace it or choose another --work-dir')


def _versions(backend: str) -> dict:
    import importlib.metadata as md
    out = {}
    for pkg in ('torch', 'mmcv', 'mmdet', 'mmdeploy', 'onnx', backend):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def export_model(config, checkpoint: Optional[str], backend: str, work_dir: str,
                 deploy_cfg=None, dynamic: bool = False, img=None,
                 input_shape: Optional[Sequence[int]] = None, force: bool = False) -> dict:
    """Export ``config`` (path or ``Config``) with ``checkpoint`` (None: the config's
    random init) end to end for ``backend`` into ``work_dir``; returns ``deploy.json``'s
    content.

    ``deploy_cfg`` (path or ``Config``) defaults to the shipped config for the model's task
    (:func:`model_task`), ``backend`` and ``dynamic``; ``input_shape`` ``(H, W)`` fixes
    the input size of a static model (mmdeploy then resizes every image to it, without
    keeping the aspect ratio); otherwise a static model takes the shape of ``img``
    (path or BGR array; default :func:`export_image`) after the test pipeline. All
    files are written to a temporary directory first and moved into ``work_dir`` with
    ``deploy.json`` last, so an interrupted export leaves no partial model; an existing
    one is refused unless ``force``.
    """
    require(backend)
    from . import compat
    compat.apply_deploy()
    import gdp_det  # noqa: F401  (GDPPrunedModule for exported configs)
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_input_shape

    model_cfg = _load_cfg(config)
    task = model_task(model_cfg.model)
    dcfg = _load_cfg(deploy_cfg or deploy_config_path(backend, task, dynamic))
    if dcfg.get('backend_config', {}).get('type') != backend:
        raise UserError(f'deploy config is for {dcfg.get("backend_config", {}).get("type")}, '
                        f'not {backend} (pass a matching --deploy-cfg)')
    if input_shape is not None:
        dcfg.onnx_config.input_shape = [int(input_shape[1]), int(input_shape[0])]
    check_work_dir(work_dir, force)
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise UserError(f'checkpoint not found: {checkpoint} (check the path)')
    img = export_image(model_cfg) if img is None else _read_image(img)
    _no_rpn_score_threshold(model_cfg.model)
    with staging_dir(work_dir) as tmp:
        start = time.perf_counter()
        written = ['deploy_cfg.py', 'model_cfg.py']
        if checkpoint is None:  # the random init, saved: the runtime and --verify use it
            checkpoint = osp.join(tmp, RANDOM_INIT)
            _save_random_init(model_cfg, checkpoint)
            written.append(RANDOM_INIT)
        torch2onnx(img, tmp, ONNX_FILE, dcfg, model_cfg, checkpoint, device='cpu')
        files = [ONNX_FILE]
        if backend == 'openvino':
            onnx_to_openvino(osp.join(tmp, ONNX_FILE), osp.join(tmp, OPENVINO_FILE))
            files += [OPENVINO_FILE, osp.splitext(OPENVINO_FILE)[0] + '.bin']
        dcfg.dump(osp.join(tmp, 'deploy_cfg.py'))
        model_cfg.dump(osp.join(tmp, 'model_cfg.py'))
        shape = get_input_shape(dcfg)
        import onnx
        dims = onnx.load(osp.join(tmp, ONNX_FILE), load_external_data=False).graph.input[0]
        dims = [d.dim_value or d.dim_param for d in dims.type.tensor_type.shape.dim]
        if RANDOM_INIT in written:
            checkpoint = osp.join(work_dir, RANDOM_INIT)
        info = dict(backend=backend, task=task, dynamic=bool(dcfg.onnx_config.get(
                        'dynamic_axes')), input_shape_wh=list(shape) if shape else None,
                    input_dims=dims, export_image_hw=list(img.shape[:2]), backend_files=files,
                    config=config if isinstance(config, str) else None,
                    checkpoint=osp.abspath(checkpoint),
                    seconds=round(time.perf_counter() - start, 1), versions=_versions(backend))
        with open(osp.join(tmp, DEPLOY_INFO), 'w') as f:
            json.dump(info, f, indent=2)
        publish(tmp, work_dir, files + written + [DEPLOY_INFO])  # the marker last
    return info


def _save_random_init(model_cfg, path: str, seed: int = 0) -> None:
    """The model's random init (mmdet's ``init_weights``, seeded, nothing downloaded) as a
    checkpoint at ``path``."""
    import copy

    from .cli import build_randomly_initialised
    model = build_randomly_initialised(copy.deepcopy(model_cfg.model), seed)
    torch.save(dict(state_dict=model.state_dict()), path)


def _no_rpn_score_threshold(model_cfg: dict) -> None:
    """mmdet filters proposals by no score; mmdeploy's RPN rewrite applies the test
    config's ``score_thr`` or else the deploy config's (0.05): set it to 0 where absent."""
    rpn = (_unwrapped(model_cfg).get('test_cfg') or {}).get('rpn')
    if isinstance(rpn, dict) and 'score_thr' not in rpn:
        rpn['score_thr'] = 0.0


def load_deployed(work_dir: str):
    """``(deploy_cfg, model_cfg, info)`` of a directory written by :func:`export_model`."""
    from mmengine.config import Config

    from .cli import load_json
    info = load_json(osp.join(work_dir, DEPLOY_INFO), 'deploy info')
    return (Config.fromfile(osp.join(work_dir, 'deploy_cfg.py')),
            Config.fromfile(osp.join(work_dir, 'model_cfg.py')), info)


def _task_processor(work_dir: str):
    """``(mmdeploy task processor, deploy info)`` of a directory written by
    :func:`export_model`."""
    deploy_cfg, model_cfg, info = load_deployed(work_dir)
    require(info['backend'])
    from . import compat
    compat.apply_deploy()
    import gdp_det  # noqa: F401
    from mmdeploy.apis import build_task_processor
    return build_task_processor(model_cfg, deploy_cfg, 'cpu'), info


def network_inputs(work_dir: str, images: Sequence) -> list:
    """The input array of the model deployed in ``work_dir`` for each of ``images``
    (paths or BGR arrays): mmdeploy's test pipeline at the deployed input shape (a static
    model exported without one: the export image's), then the model config's data
    pre-processing (normalisation, padding), as :func:`runtime_predict` feeds the runtime."""
    from mmdeploy.utils import get_input_shape
    processor, info = _task_processor(work_dir)
    preprocess = processor.build_data_preprocessor()
    shape = get_input_shape(processor.deploy_cfg)
    if shape is None and not info['dynamic']:  # static at the export image's shape
        shape = [int(info['input_dims'][3]), int(info['input_dims'][2])]
    with torch.no_grad():
        return [preprocess(processor.create_input(_read_image(img), shape)[0],
                           False)['inputs'].numpy() for img in images]


def build_runtime_model(work_dir: str):
    """mmdeploy's ``End2EndModel`` (on the CPU) of a directory written by
    :func:`export_model`: the model config's data pre-processing, the runtime model,
    mmdeploy's post-processing to ``DetDataSample``."""
    processor, info = _task_processor(work_dir)
    name = OPENVINO_FILE if info['backend'] == 'openvino' else ONNX_FILE
    model = processor.build_backend_model([osp.join(work_dir, name)])
    model.gdp_task_processor = processor
    return model


def runtime_predict(model, img):
    """The runtime model's (:func:`build_runtime_model`, or a work directory) prediction
    on ``img`` (path or BGR array) as mmdet's ``DetDataSample``, boxes in the image's
    pixels and clipped to the image as mmdet clips them (mmdeploy's graph clips them to
    the padded input, so a box may reach into the padding)."""
    if isinstance(model, str):
        model = build_runtime_model(model)
    from mmdeploy.utils import get_input_shape
    processor = model.gdp_task_processor
    data, _ = processor.create_input(_read_image(img), get_input_shape(processor.deploy_cfg))
    with torch.no_grad():
        sample = model.test_step(data)[0]
    h, w = sample.ori_shape[:2]
    boxes = sample.pred_instances.bboxes
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return sample


def torch_predict(config, checkpoint: Optional[str], img, seed: int = 0):
    """mmdet's ``inference_detector`` of ``config`` with ``checkpoint`` (None: the
    config's random init, seeded) on ``img`` (path or BGR array), on the CPU."""
    import gdp_det  # noqa: F401
    from mmdet.apis import inference_detector, init_detector
    torch.manual_seed(seed)
    model = init_detector(_load_cfg(config), checkpoint, device='cpu')
    with torch.no_grad():
        return inference_detector(model, _read_image(img))


def detections(sample) -> np.ndarray:
    """``[x1, y1, x2, y2, score, label]`` rows of a ``DetDataSample``'s predictions."""
    p = sample.pred_instances
    return np.concatenate([p.bboxes.cpu().numpy().reshape(-1, 4),
                           p.scores.cpu().numpy().reshape(-1, 1),
                           p.labels.cpu().numpy().reshape(-1, 1)], 1).astype(np.float64)


def match_detections(ref: np.ndarray, out: np.ndarray, score_tol: float = 1e-3,
                     box_tol: float = 0.1, score_thr: Optional[float] = None) -> dict:
    """Order-free comparison of two detection sets (rows of :func:`detections`).

    Detections are paired greedily, highest ``ref`` score first: a pair has the same
    label, scores within ``score_tol`` and every box corner within ``box_tol`` pixels.
    An unpaired detection is *at the threshold* when its score is within ``score_tol``
    of ``score_thr`` (the two runtimes may keep it or not). Returns ``num_ref``,
    ``num_out``, ``matched``, ``unmatched_ref`` / ``unmatched_out`` (not at the
    threshold), ``at_threshold``, ``max_score_diff`` and ``max_box_diff`` over the
    pairs, ``pairs`` (``[ref row, out row]``) and ``ok`` (nothing unmatched beyond the
    threshold ones).
    """
    used, pairs = np.zeros(len(out), bool), []
    score_diff, box_diff, paired_ref = [0.0], [0.0], np.zeros(len(ref), bool)
    for i in np.argsort(-ref[:, 4], kind='stable'):
        cand = ((out[:, 5] == ref[i, 5]) & ~used & (np.abs(out[:, 4] - ref[i, 4]) <= score_tol)
                & (np.abs(out[:, :4] - ref[i, :4]).max(1, initial=0) <= box_tol))
        if cand.any():
            j = np.flatnonzero(cand)[np.argmin(np.abs(out[cand, :4] - ref[i, :4]).max(1))]
            used[j] = paired_ref[i] = True
            pairs.append([int(i), int(j)])
            score_diff.append(abs(out[j, 4] - ref[i, 4]))
            box_diff.append(np.abs(out[j, :4] - ref[i, :4]).max())

    def at_thr(rows):
        if score_thr is None:
            return np.zeros(len(rows), bool)
        return np.abs(rows[:, 4] - score_thr) <= score_tol
    left_ref, left_out = ref[~paired_ref], out[~used]
    n_thr = int(at_thr(left_ref).sum() + at_thr(left_out).sum())
    result = dict(num_ref=len(ref), num_out=len(out), matched=int(used.sum()),
                  unmatched_ref=int((~at_thr(left_ref)).sum()),
                  unmatched_out=int((~at_thr(left_out)).sum()), at_threshold=n_thr,
                  max_score_diff=float(max(score_diff)), max_box_diff=float(max(box_diff)),
                  pairs=pairs)
    result['ok'] = result['unmatched_ref'] == 0 and result['unmatched_out'] == 0
    return result


def compare_with_torch(work_dir: str, img=None, score_tol: float = 1e-3,
                       box_tol: float = 0.1) -> dict:
    """:func:`match_detections` of the deployed model in ``work_dir`` against mmdet's
    predict of the model it was exported from (config and checkpoint as recorded), on
    ``img`` (default: the export image of :func:`export_image`)."""
    deploy_cfg, model_cfg, info = load_deployed(work_dir)
    img = export_image(model_cfg) if img is None else _read_image(img)
    ref = torch_predict(model_cfg, info.get('checkpoint'), img)
    out = runtime_predict(build_runtime_model(work_dir), img)
    thr = _score_thr(model_cfg.model)
    return match_detections(detections(ref), detections(out), score_tol, box_tol, thr)


def _score_thr(model_cfg: dict) -> Optional[float]:
    """The final ``score_thr`` of the model's test config (RoI head's for two-stage)."""
    test_cfg = _unwrapped(model_cfg).get('test_cfg') or {}
    return test_cfg.get('rcnn', test_cfg).get('score_thr')
