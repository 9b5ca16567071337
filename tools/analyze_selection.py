#!/usr/bin/env python
"""When did GDP's selection settle? The table of a ``SelectionTraceHook``'s trace.

    python tools/analyze_selection.py WORK_DIR_OR_TRACE [--every N]

Per recorded iteration of the GDP phase: how many channels a cut made then would have
removed, and what share of the channels the cut removed they include (1.000: the
selection was already the cut's). Record the trace by adding
``dict(type='SelectionTraceHook', interval=2)`` after the ``GDPHook`` in ``custom_hooks``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from gdp_det.cli import ArgumentParser, UserError, load_json, tool_main  # noqa: E402


@tool_main
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument('path', help='a work dir holding selection_trace.json, or the file')
    p.add_argument('--every', type=int, help='print every N-th iteration (default: all)')
    args = p.parse_args(argv)
    from gdp_det.selection_trace import settling_table
    path = args.path if osp.isfile(args.path) else osp.join(args.path, 'selection_trace.json')
    if not osp.isfile(path):
        raise UserError(f'no selection_trace.json under {args.path}: train with '
                        "dict(type='SelectionTraceHook') after the GDPHook in custom_hooks")
    print('\n'.join(settling_table(load_json(path, 'selection trace'), args.every)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
