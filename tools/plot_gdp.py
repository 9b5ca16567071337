#!/usr/bin/env python
"""Draw the GDP plots of a work dir: gate histograms, FLOPs ratio, layer widths.

    python tools/plot_gdp.py WORK_DIR_OR_PRUNE_REPORT [--out-dir DIR]

Accepts a GDP training work dir (reads ``pruned/prune_report.json``), a pipeline
work dir (reads ``gdp/pruned/prune_report.json``) or a ``prune_report.json``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from gdp_det.cli import (ArgumentParser, UserError, check_writable_dir,  # noqa: E402
                         load_json, tool_main)


def find_report(path: str) -> str:
    for cand in (path, osp.join(path, 'prune_report.json'),
                 osp.join(path, 'pruned', 'prune_report.json'),
                 osp.join(path, 'gdp', 'pruned', 'prune_report.json')):
        if osp.isfile(cand):
            return cand
    raise UserError(f'no prune_report.json under {path} (give a GDP work dir with pruned/, '
                    'a pipeline work dir or the report itself)')


@tool_main
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument('path')
    p.add_argument('--out-dir', help='default: next to the report')
    args = p.parse_args(argv)
    from gdp_det.pipeline.plots import plot_run
    report_path = find_report(args.path)
    report = load_json(report_path, 'prune report')
    out_dir = args.out_dir or osp.dirname(report_path)
    check_writable_dir(out_dir)
    for path in plot_run(report, out_dir):
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
