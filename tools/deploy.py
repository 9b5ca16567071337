#!/usr/bin/env python
"""Deploy an mmdet detector (plain, or a GDP export of tools/prune.py) end to end
(post-processing and NMS in the graph) to ONNX Runtime or OpenVINO through mmdeploy.

    python tools/deploy.py CONFIG CHECKPOINT --backend onnxruntime --work-dir DIR
    python tools/deploy.py CONFIG CHECKPOINT --backend openvino --work-dir DIR --dynamic --verify

Writes DIR/end2end.onnx (and, for OpenVINO, DIR/end2end.xml + .bin), DIR/deploy_cfg.py,
DIR/model_cfg.py and DIR/deploy.json. The deploy config defaults to the one shipped in
configs/deploy/ for the model's task (detection, or instance-seg for mask heads), the
backend and the shape: static (the export image's shape after the test pipeline, or
--input-shape) unless --dynamic. --verify runs the deployed model and mmdet's predict on
the export image and compares the detections order-free (exit code 3 when they differ).
Needs the deploy extra: pip install -e '.[deploy]' && pip install --no-deps mmdeploy==1.3.1
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs
from gdp_det.cli import ArgumentParser, DictAction, UserError, tool_main  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('config', help='mmdet config (e.g. DIR/NAME_pruned.py of tools/prune.py)')
    p.add_argument('checkpoint', nargs='?',
                   help='checkpoint (default: none, the config\'s random init)')
    p.add_argument('--backend', required=True, choices=('onnxruntime', 'openvino'))
    p.add_argument('--work-dir', required=True, help='directory for the deployed model')
    p.add_argument('--deploy-cfg', help='mmdeploy deploy config (default: configs/deploy/'
                   'mmdet/TASK/TASK_BACKEND_{static,dynamic}.py)')
    p.add_argument('--dynamic', action='store_true',
                   help='dynamic batch, height and width (default: static shape)')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='static input size (images are resized to it, aspect ratio not kept)')
    p.add_argument('--img', help='export image (default: a fixed noise image of the test '
                   'pipeline\'s size)')
    p.add_argument('--verify', action='store_true',
                   help='compare the deployed model\'s detections with mmdet\'s predict')
    p.add_argument('--score-tol', type=float, default=1e-3,
                   help='--verify: largest score difference of a matched detection')
    p.add_argument('--box-tol', type=float, default=0.1,
                   help='--verify: largest box corner difference (pixels) of a match')
    p.add_argument('--force', action='store_true', help='replace an existing deployed model')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of the model config (key=value)')
    return p.parse_args(argv)


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from gdp_det import deploy
    from gdp_det.cli import load_config
    deploy.require(args.backend)
    if args.deploy_cfg and (args.dynamic or args.input_shape):
        raise UserError('--deploy-cfg sets the shapes itself; drop --dynamic / --input-shape')
    if args.dynamic and args.input_shape:
        raise UserError('--input-shape fixes a static shape; it does not go with --dynamic')
    cfg = load_config(args.config, args.cfg_options)
    if args.checkpoint is None:
        print('no checkpoint: exporting the config\'s random init', file=sys.stderr)
    info = deploy.export_model(cfg, args.checkpoint, args.backend, args.work_dir,
                               deploy_cfg=args.deploy_cfg, dynamic=args.dynamic,
                               img=args.img, input_shape=args.input_shape, force=args.force)
    print(json.dumps({k: info[k] for k in ('backend', 'task', 'dynamic', 'input_shape_wh',
                                           'seconds')}, indent=2))
    for name in info['backend_files']:
        print(f'wrote {osp.join(args.work_dir, name)}')
    if args.verify:
        found = deploy.compare_with_torch(args.work_dir, args.img, args.score_tol,
                                          args.box_tol)
        print(json.dumps(dict(verify={k: v for k, v in found.items() if k != 'pairs'}),
                         indent=2))
        if not found['ok']:
            raise UserError(f'the deployed model\'s detections differ from mmdet\'s predict '
                            f'({found["unmatched_ref"]} of mmdet\'s and '
                            f'{found["unmatched_out"]} of {args.backend}\'s unmatched at '
                            f'score_tol {args.score_tol}, box_tol {args.box_tol} px)',
                            exit_code=3)
    return 0


if __name__ == '__main__':
    sys.exit(main())
