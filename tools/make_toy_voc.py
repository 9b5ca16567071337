#!/usr/bin/env python
"""Generate the procedural toy detection dataset in Pascal VOC layout.

Example::

    python tools/make_toy_voc.py --out data/toyvoc --num-train 480 \
        --num-val 120 --seed 0 --coco
"""
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from gdp_det.cli import ArgumentParser, check_writable_dir, tool_main  # noqa: E402
from gdp_det.datasets.toy_voc import TOY_CLASSES, make_toy_voc  # noqa: E402


def parse_args(argv=None):
    parser = ArgumentParser(
        description='Write a toy VOC-format detection dataset '
        f'(classes: {", ".join(TOY_CLASSES)})')
    parser.add_argument('--out', required=True, help='output root directory')
    parser.add_argument('--num-train', type=int, default=480,
                        help='images in VOC2007/ImageSets/Main/trainval.txt')
    parser.add_argument('--num-val', type=int, default=120,
                        help='images in VOC2007/ImageSets/Main/test.txt')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--img-size', type=int, default=256,
                        help='longest possible image side (sides are drawn '
                        'from [0.75, 1] x img-size)')
    parser.add_argument('--max-objects', type=int, default=4,
                        help='at most this many objects per image')
    parser.add_argument('--coco', action='store_true',
                        help='also write annotations/instances_{trainval,test}'
                        '.json in COCO format')
    args = parser.parse_args(argv)
    for name, low in (('num_train', 1), ('num_val', 1), ('img_size', 64), ('max_objects', 1)):
        if getattr(args, name) < low:
            parser.error(f'--{name.replace("_", "-")} must be at least {low}, '
                         f'got {getattr(args, name)}')
    return args


@tool_main
def main(argv=None):
    args = parse_args(argv)
    check_writable_dir(args.out)
    t0 = time.time()
    summary = make_toy_voc(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        img_size=args.img_size,
        coco=args.coco,
        max_objects=args.max_objects)
    for split, s in summary['splits'].items():
        print(f'{split}: {s["images"]} images, {s["objects"]} objects '
              f'({s["truncated"]} truncated)')
    print(f'wrote {args.out} in {time.time() - t0:.1f}s')


if __name__ == '__main__':
    sys.exit(main())
