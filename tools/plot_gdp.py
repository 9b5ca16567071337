#!/usr/bin/env python
"""Draw the GDP plots of a work dir: gate histograms, FLOPs ratio, layer widths.

    python tools/plot_gdp.py WORK_DIR_OR_PRUNE_REPORT [--out-dir DIR]

Accepts a GDP training work dir (reads ``pruned/prune_report.json``), a pipeline
work dir (reads ``gdp/pruned/prune_report.json``) or a ``prune_report.json``.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def find_report(path: str) -> str:
    for cand in (path, osp.join(path, 'prune_report.json'),
                 osp.join(path, 'pruned', 'prune_report.json'),
                 osp.join(path, 'gdp', 'pruned', 'prune_report.json')):
        if osp.isfile(cand):
            return cand
    raise FileNotFoundError(f'no prune_report.json under {path}: give a GDP work dir '
                            '(with pruned/), a pipeline work dir or the report itself')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('path')
    p.add_argument('--out-dir', help='default: next to the report')
    args = p.parse_args(argv)
    from gdp_det.report import plot_run
    try:
        report_path = find_report(args.path)
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    with open(report_path) as f:
        report = json.load(f)
    for path in plot_run(report, args.out_dir or osp.dirname(report_path)):
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
