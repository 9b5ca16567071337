#!/usr/bin/env python
"""GDP on a CUDA card: training-step overhead, host syncs, prune/export/verify.

    python tools/gpu_check.py [--device cuda] [--size 800 1333] [--repeats 20]
                              [--out benchmarks/RESULTS.md] [--json benchmarks/gpu_check.json]

On RetinaNet R50-FPN (``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py``, random init) at
H x W, batch 2, with mmengine's ``AmpOptimWrapper`` (fp16):

(a) training-iteration time of the plain detector and of its GDP version with its
    ``GDPHook`` (a tiny mmengine ``Runner`` each, driven iteration by iteration,
    interleaved; medians): the overhead ratio GDP / plain;
(b) host syncs: the gated tensor-mode forward + backward under
    ``torch.cuda.set_sync_debug_mode('error')`` (the plain detector as the control),
    and the syncs per whole training iteration in ``'warn'`` mode, GDP minus plain (the
    gates' and the hook's share, with the source lines that caused them), and the gated
    forward + backward under bfloat16 autocast too;
(c) random gates (half of each group, ``--seed``), prune + export + verify with
    ``gdp_det.api.prune_and_export`` (the check on the model's device, TF32 off:
    ``verified_on``), then the export rebuilt from disk on the device and compared
    with the gated model there (tensor-mode outputs and detections after NMS; fp32,
    TF32 off);
(d) the GPU path's second reading (issue 20): the latency calibration's probe /
    unpruned forward ratio with whole forwards timed on their own (as the latency
    model does) and with per-layer timing in the same forwards (on CUDA every timed
    layer syncs twice); the gate gradient under float16 and bfloat16 autocast (loss
    scaled by 2^16, as the AMP scaler starts) against float32; ``torch._dynamo``
    graph breaks of the plain and the gated tensor-mode forward; mmdet's dcnv2 mdpool
    Faster R-CNN, whose ``deform_roi_pool`` has no CPU kernel, built on the CPU, then
    traced, exported and checked on CUDA (on the CPU: its RoI layers opaque, the
    check skipped).

Results: a JSON file and the ``(g) GPU check`` section of ``--out``. Without CUDA (or
with ``--device cpu``) it runs in CPU mode: bf16 autocast, 256x256 unless ``--size``
is given, (b) skipped (``cuda_parts_skipped: true``) and bfloat16 alone in (d). On
CUDA it needs mmcv with its CUDA ops (mmdet's focal loss and NMS call them on CUDA
tensors); it checks that first.
"""
import argparse
import contextlib
import json
import os.path as osp
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import gdp_model_cfg, load_config  # noqa: E402

CONFIG = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
DCN_CONFIG = 'mmdet::dcnv2/faster-rcnn_r50_fpn_mdpool_1x_coco.py'  # an op without a CPU kernel
SECTION = '(g) GPU check: RetinaNet R50-FPN GDP training step, host syncs, prune on the device'
SYNC_MSG = 'synchronizing CUDA operation'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', choices=('cuda', 'cpu'),
                   default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size (default: 800 1333 on CUDA, 256 256 on CPU)')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--repeats', type=int, help='timed iterations per model (default: 20 '
                   'on CUDA, 3 on CPU)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random gates in (c)')
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'RESULTS.md'),
                   help='markdown file that gets the "(g) GPU check" section')
    p.add_argument('--json', help='JSON results (default: gpu_check.json beside --out)')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available (use --device cpu)')
    cuda = args.device == 'cuda'
    args.size = tuple(args.size or ((800, 1333) if cuda else (256, 256)))
    args.repeats = args.repeats or (20 if cuda else 3)
    args.json = args.json or osp.join(osp.dirname(osp.abspath(args.out)), 'gpu_check.json')
    return args


# -- a tiny Runner per model ----------------------------------------------------------
def synthetic_batch(size, batch: int, num_classes: int, seed: int = 0) -> dict:
    """A collated mmdet batch: uint8 images and four random boxes per image."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                        scale_factor=(1., 1.)))
        half = torch.tensor([w / 2, h / 2])
        xy = torch.rand(4, 2, generator=gen) * half
        wh = torch.rand(4, 2, generator=gen) * half + 16
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                      labels=torch.randint(0, num_classes, (4,), generator=gen))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _setup_only_loop():
    from mmengine.runner import IterBasedTrainLoop

    class SetupOnlyLoop(IterBasedTrainLoop):
        """``Runner.train()`` with this loop sets training up (optimizer, ``before_train``
        of every hook) and returns; the caller then drives ``run_iter`` itself."""

        def run(self):
            self.runner.call_hook('before_train')
            self.runner.call_hook('before_train_epoch')
            return self.runner.model
    return SetupOnlyLoop


def _cpu_amp_wrapper():
    from mmengine.optim import OptimWrapper

    class CPUAmpOptimWrapper(OptimWrapper):
        """``OptimWrapper`` whose forward runs under CPU bf16 autocast (mmengine's
        ``AmpOptimWrapper`` refuses to start without an accelerator)."""

        @contextlib.contextmanager
        def optim_context(self, model):
            with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
                yield
    return CPUAmpOptimWrapper


def build_runner(model_cfg: dict, name: str, work_dir: str, batch: dict, device: str,
                 max_iters: int, gdp: bool, amp: bool = True):
    """A ``Runner`` with SGD, AMP (unless ``amp=False``) and (``gdp``) the R50 configs'
    ``GDPHook``, set up and ready for ``runner.train_loop.run_iter(batch)``."""
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader
    items = [dict(inputs=i, data_samples=s) for i, s in zip(batch['inputs'],
                                                             batch['data_samples'])]
    sgd = dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=1e-4)
    optim = (dict(type='OptimWrapper', optimizer=sgd) if not amp
             else dict(type='AmpOptimWrapper', dtype='float16', optimizer=sgd) if device == 'cuda'
             else dict(type=_cpu_amp_wrapper(), optimizer=sgd))
    hooks = [dict(type='GDPHook', flops_target=0.5, min_channels=8, channel_divisor=8,
                  export=False, log_interval=10**6, num_snapshots=2)] if gdp else []
    runner = Runner(
        model=model_cfg, work_dir=work_dir, experiment_name=name,
        train_dataloader=DataLoader(items, batch_size=len(items), collate_fn=pseudo_collate),
        train_cfg=dict(type=_setup_only_loop(), max_iters=max_iters),
        optim_wrapper=optim, custom_hooks=hooks, default_scope='mmdet',
        default_hooks=dict(logger=None, checkpoint=None), log_level='WARNING',
        randomness=dict(seed=0))
    runner.model.to(device)  # Runner puts it on CUDA whenever there is one
    runner.train()
    return runner


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def timed_iter(runner, batch: dict, device: str) -> float:
    """Seconds of one training iteration: hooks, data preprocessing, forward, backward,
    optimizer step."""
    runner.model.train()
    _sync(device)
    t = time.perf_counter()
    runner.train_loop.run_iter(batch)
    _sync(device)
    return time.perf_counter() - t


# -- (b) host syncs ----------------------------------------------------------------------
def _where(filename: str, lineno: int) -> str:
    for mark in ('site-packages/', REPO + '/'):
        if mark in filename:
            filename = filename.split(mark, 1)[1]
    return f'{filename}:{lineno}'


def tensor_mode_sync(model, batch: dict, dtype) -> dict:
    """Tensor-mode forward + backward (backbone, neck, head: no loss, no assigner) under
    ``set_sync_debug_mode('error')``; the first synchronizing call is reported."""
    from torch.utils._pytree import tree_leaves
    model.train()
    data = model.data_preprocessor(batch, True)  # the host-to-device copy is outside

    def fwd_bwd():
        with torch.autocast('cuda', dtype=dtype):
            outs = model(data['inputs'], data['data_samples'], mode='tensor')
        sum(t.float().sum() for t in tree_leaves(outs) if torch.is_tensor(t)).backward()

    fwd_bwd()  # warm-up
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        fwd_bwd()
    except RuntimeError as e:
        if SYNC_MSG not in str(e):
            raise
        frames = traceback.extract_tb(e.__traceback__)[-3:]
        return dict(sync_free=False, where=[f'{_where(f.filename, f.lineno)} {f.line}'
                                            for f in frames])
    finally:
        torch.cuda.set_sync_debug_mode('default')
        model.zero_grad(set_to_none=True)
    return dict(sync_free=True, where=[])


def iteration_syncs(runner, batch: dict) -> Counter:
    """Source lines of every synchronizing CUDA call in one training iteration."""
    runner.model.train()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            runner.train_loop.run_iter(batch)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return Counter(_where(w.filename, w.lineno) for w in rec if SYNC_MSG in str(w.message))


# -- (c) prune on the device --------------------------------------------------------------
@contextlib.contextmanager
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def prune_on_device(cfg, gated, size, seed: int, out_dir: str, device: str) -> dict:
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from gdp_det.api import (max_output_difference, max_prediction_difference,
                             prune_and_export)
    from tools.prune import randomize_gates
    randomize_gates(gated.gdp_gates, 0.5, seed)
    t = time.perf_counter()
    _, report, paths = prune_and_export(cfg, gated, out_dir, name='retinanet_gpu_check',
                                        min_channels=8, channel_divisor=8, force=True)
    seconds = time.perf_counter() - t
    exported = MODELS.build(Config.fromfile(paths[0]).model)
    exported.load_state_dict(torch.load(paths[1], map_location='cpu',
                                        weights_only=True)['state_dict'])
    with no_tf32():
        device_diff = max_output_difference(gated.to(device), exported.to(device), size)
        device_predict = max_prediction_difference(gated, exported, size)
    return dict(seed=seed, flops_ratio=report['flops_ratio'],
                params_ratio=report['params_ratio'], seconds=seconds,
                verified_on=report['verified_on'],
                verify_max_rel_diff=report['max_rel_output_diff'],
                verify_predict_max_diff=report['predict_check']['max_diff'],
                device_max_rel_diff=device_diff,
                device_predict_max_diff=device_predict['max_diff'],
                device_predict_dets=device_predict['num_dets'])


# -- (d) the GPU path's second reading -----------------------------------------------------
def calibration_ratios(gated, device: str, repeats: int) -> dict:
    """The probe / unpruned forward ratio of the latency calibration: whole forwards
    timed on their own (``network_times``, what the latency model uses) and with the
    per-layer timers in the same forwards (before issue 20)."""
    import numpy as np

    from gdp_det.detector import detector_forward_fn
    from gdp_det.latency import (PROBE_SHARE, _LayerTimer, interleaved_medians,
                                 network_times, plain_copy, uniform_gates)
    graph, trace = gated.gdp_gates.graph, gated.gdp_gates.trace
    models = [plain_copy(gated, np.ones(graph.num_channels)),
              plain_copy(gated, uniform_gates(graph, PROBE_SHARE))]
    forward = detector_forward_fn(tuple(trace.input_size), trace.num_proposals)
    names = [c.name for c in graph.calls]
    (whole, probe), _ = network_times(models, forward, names, device, repeats)
    timers = [_LayerTimer(m, set(names), device) for m in models]
    timed = interleaved_medians([t.wrap(lambda m=m: forward(m))
                                 for t, m in zip(timers, models)], device, repeats)
    for t in timers:
        t.medians(names)  # (removes the hooks)
    return dict(ratio=probe / whole, ratio_layer_timed=timed[1] / timed[0],
                whole_s=whole, whole_layer_timed_s=timed[0])


def low_precision_gate_grads(gated, batch: dict, device: str) -> dict:
    """Per autocast dtype: whether the gates' gradient of a tensor-mode forward +
    backward (loss scaled by 2^16) is finite, and its largest difference to the
    float32 gradient relative to the largest float32 entry."""
    from torch.utils._pytree import tree_leaves
    gated.train()
    data = gated.data_preprocessor(batch, True)
    scale = 2.0 ** 16

    def gate_grad(dtype):
        gated.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            outs = gated(data['inputs'], data['data_samples'], mode='tensor')
        loss = sum(t.float().sum() for t in tree_leaves(outs) if torch.is_tensor(t))
        (loss * scale).backward()
        grad = gated.gdp_gates.a.grad.double() / scale
        gated.zero_grad(set_to_none=True)
        return grad

    ref = gate_grad(None)
    dtypes = (torch.float16, torch.bfloat16) if device == 'cuda' else (torch.bfloat16, )
    res = {}
    for dtype in dtypes:
        g = gate_grad(dtype)
        res[str(dtype).split('.')[-1]] = dict(
            finite=bool(torch.isfinite(g).all()),
            max_rel_diff=float((g - ref).abs().max() / ref.abs().max()))
    return res


def export_without_cpu_kernel(out_dir: str) -> dict:
    """mmdet's dcnv2 mdpool Faster R-CNN (256x256, random gates, seed 0), built on the
    CPU as tools/prune.py builds it, pruned and exported with the check: its
    ``deform_roi_pool`` has no CPU kernel, so the trace and the export's check run on
    CUDA; without CUDA its RoI layers are traced as opaque (their channels kept,
    named in ``opaque``) and the check is skipped, saying why."""
    from mmdet.registry import MODELS

    from gdp_det.api import prune_and_export
    from tools.prune import randomize_gates
    cfg = load_config(DCN_CONFIG)
    cfg.model.backbone.init_cfg = None
    cfg.model = gdp_model_cfg(cfg, (256, 256))
    model = MODELS.build(cfg.model)
    randomize_gates(model.gdp_gates, 0.5, 0)
    _, report, _ = prune_and_export(cfg, model, out_dir, name='mdpool_gpu_check', force=True)
    return dict(opaque=sorted(report['unsupported']), groups=len(report['groups']),
                flops_ratio=report['flops_ratio'], verified_on=report.get('verified_on'),
                max_rel_output_diff=report.get('max_rel_output_diff'),
                verification_skipped=report.get('verification_skipped'))


def graph_breaks(model, batch: dict) -> int:
    """``torch._dynamo.explain``'s graph breaks of ``model``'s tensor-mode forward."""
    model.eval()
    data = model.data_preprocessor(batch, False)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(
        lambda x: model(x, data['data_samples'], mode='tensor'))(data['inputs'])
    return explained.graph_break_count


# -- the check ------------------------------------------------------------------------
def check_mmcv_cuda_ops() -> None:
    try:
        from mmcv.ops import nms
        box = torch.tensor([[0., 0., 10., 10.]], device='cuda')
        nms(box, torch.ones(1, device='cuda'), 0.5)
    except (ImportError, RuntimeError) as e:
        sys.exit(f'gpu_check: mmcv has no CUDA ops here ({str(e).splitlines()[0]}); build '
                 'mmcv where torch sees the GPU and nvcc is installed, or install a CUDA '
                 'wheel of mmcv')


def run_check(args) -> dict:
    from mmdet.utils import register_all_modules

    from gdp_det.detector import unwrap
    register_all_modules()
    cuda = args.device == 'cuda'
    if cuda:
        check_mmcv_cuda_ops()
    cfg = load_config(CONFIG)
    cfg.model.backbone.init_cfg = None  # random init: no pretrained download
    plain_cfg = cfg.model.to_dict()
    cfg.model = gdp_model_cfg(cfg, args.size)
    batch = synthetic_batch(args.size, args.batch, plain_cfg['bbox_head']['num_classes'])
    warmup = 3 if cuda else 1
    max_iters = warmup + args.repeats + 10  # the hook's schedule spans every timed iteration
    res = dict(device=args.device, size=list(args.size), batch=args.batch,
               repeats=args.repeats, torch=torch.__version__, cuda_parts_skipped=not cuda,
               device_name=(torch.cuda.get_device_name() if cuda else 'CPU'),
               amp='float16, AmpOptimWrapper' if cuda else 'bfloat16, CPU autocast',
               date=time.strftime('%Y-%m-%d'))
    with tempfile.TemporaryDirectory() as tmp:
        runners = dict(
            plain=build_runner(plain_cfg, 'gpu_check_plain', osp.join(tmp, 'plain'), batch,
                               args.device, max_iters, gdp=False),
            gdp=build_runner(cfg.model, 'gpu_check_gdp', osp.join(tmp, 'gdp'), batch,
                             args.device, max_iters, gdp=True))
        times = {k: [] for k in runners}
        for i in range(warmup + args.repeats):
            for k, r in runners.items():  # interleaved: both see the same machine state
                t = timed_iter(r, batch, args.device)
                if i >= warmup:
                    times[k].append(t)
        plain_t, gdp_t = (statistics.median(times[k]) for k in ('plain', 'gdp'))
        res.update(step_plain_s=plain_t, step_gdp_s=gdp_t, overhead_ratio=gdp_t / plain_t)
        models = {k: unwrap(r.model) for k, r in runners.items()}
        if cuda:
            sites = {k: iteration_syncs(r, batch) for k, r in runners.items()}
            extra = sites['gdp'] - sites['plain']
            res['sync'] = dict(
                tensor_mode_gdp=tensor_mode_sync(models['gdp'], batch, torch.float16),
                tensor_mode_plain=tensor_mode_sync(models['plain'], batch, torch.float16),
                tensor_mode_gdp_bf16=tensor_mode_sync(models['gdp'], batch, torch.bfloat16),
                iteration_syncs_plain=sum(sites['plain'].values()),
                iteration_syncs_gdp=sum(sites['gdp'].values()),
                extra_sync_sites=dict(extra.most_common()))
        else:
            res['sync'] = None
        res['gpu_path'] = dict(
            calibration=calibration_ratios(models['gdp'], args.device, args.repeats),
            gate_grads=low_precision_gate_grads(models['gdp'], batch, args.device),
            graph_breaks={k: graph_breaks(m, batch) for k, m in models.items()},
            no_cpu_kernel=export_without_cpu_kernel(osp.join(tmp, 'mdpool')))
        res['prune'] = prune_on_device(cfg, models['gdp'], args.size, args.seed,
                                       osp.join(tmp, 'export'), args.device)
    return res


def markdown(res: dict, argv) -> list:
    s, p = res['sync'], res['prune']
    h, w = res['size']
    rows = ['| | |', '|---|---|',
            f"| device | {res['device_name']} (torch {res['torch']}) |",
            f"| input, batch, AMP | {h}x{w}, {res['batch']}, {res['amp']} |",
            f"| plain training iteration (ms, median of {res['repeats']}) | "
            f"{1000 * res['step_plain_s']:.1f} |",
            f"| GDP training iteration incl. GDPHook (ms) | {1000 * res['step_gdp_s']:.1f} |",
            f"| overhead GDP / plain | {res['overhead_ratio']:.3f} "
            f"({100 * (res['overhead_ratio'] - 1):+.1f} %) |"]
    if s is None:
        rows.append('| host syncs | not checked (no CUDA) |')
    else:
        for k, what in (('gdp', 'gdp'), ('plain', 'plain'), ('gdp_bf16', 'gdp (bf16)')):
            t = s[f'tensor_mode_{k}']
            rows.append(f"| host sync in the {what} tensor-mode forward + backward | "
                        f"{'none' if t['sync_free'] else 'yes: ' + '; '.join(t['where'])} |")
        sites = ', '.join(f'{n}x {k}' for k, n in s['extra_sync_sites'].items()) or 'none'
        rows.append(f"| syncs per training iteration, plain / GDP | "
                    f"{s['iteration_syncs_plain']} / {s['iteration_syncs_gdp']} (GDP's own: "
                    f"{sites}) |")
    c, g, k = (res['gpu_path'][key] for key in ('calibration', 'gate_grads', 'no_cpu_kernel'))
    rows += [f"| latency calibration, probe / unpruned forward: whole forwards / with "
             f"per-layer timing | {c['ratio']:.3f} / {c['ratio_layer_timed']:.3f} |",
             f"| gate gradient under autocast (loss x 2^16), largest difference to float32: "
             f"{' / '.join(g)} | " + ' / '.join(
                 f"{v['max_rel_diff']:.1e}" if v['finite'] else 'not finite'
                 for v in g.values()) + ' |',
             f"| torch.compile graph breaks of the tensor forward, plain / GDP | "
             f"{res['gpu_path']['graph_breaks']['plain']} / "
             f"{res['gpu_path']['graph_breaks']['gdp']} |",
             f"| `{DCN_CONFIG}` (deform_roi_pool: no CPU kernel), random gates: trace, "
             f"export, check | {k['groups']} channel groups, "
             + (f"{len(k['opaque'])} RoI layers opaque (channels kept), " if k['opaque']
                else 'traced through, ')
             + f"FLOPs ratio {k['flops_ratio']:.3f}, "
             + (f"verified on {k['verified_on']} ({k['max_rel_output_diff']:.1e}) |"
                if k['verification_skipped'] is None else 'check skipped (no CUDA) |')]
    rows += [f"| prune + export + verify, random gates (seed {p['seed']}) | "
             f"{p['seconds']:.1f} s, FLOPs ratio {p['flops_ratio']:.3f}, params ratio "
             f"{p['params_ratio']:.3f} |",
             f"| max relative output difference: verify (on {p['verified_on']}) / export "
             f"reloaded on {res['device']} | {p['verify_max_rel_diff']:.1e} / "
             f"{p['device_max_rel_diff']:.1e} |",
             f"| detections after NMS, largest difference: verify (on {p['verified_on']}) / "
             f"on {res['device']} ({p['device_predict_dets']} detections) | "
             f"{p['verify_predict_max_diff']:.1e} / {p['device_predict_max_diff']:.1e} |",
             '', f"Command: `python tools/gpu_check.py {' '.join(argv)}` ({res['date']})."]
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    res = run_check(args)
    from gdp_det.files import atomic_write
    from gdp_det.pipeline.report import update_sections
    atomic_write(args.json, json.dumps(res, indent=2) + '\n')
    head = None if osp.isfile(args.out) else ['# gdp-det benchmarks']
    update_sections(args.out, [(SECTION, markdown(res, argv))], head)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
