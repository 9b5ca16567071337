"""The job's report: one table row per model (Markdown + JSON) with the figures of
:mod:`.plots`, and the Markdown sections the job and the benchmark tools update.

``write_report(work_dir, rows, prune_report)`` writes ``report.md`` and
``report.json`` atomically; ``update_sections`` replaces sections of a Markdown file
(``benchmarks/RESULTS.md``), keeping the others.
"""
from __future__ import annotations

import json
import os.path as osp
import re
from typing import Dict, List, Optional, Tuple

from ..files import atomic_write
from .plots import plot_run


def update_sections(path: str, sections: List[Tuple[str, List[str]]],
                    head: Optional[List[str]] = None) -> str:
    """Replace the ``## title`` sections of the markdown file ``path`` (or append them),
    keeping every other section, and ``head`` (the text before the first section) if
    given. Sections are kept in title order. Written atomically; returns the text."""
    old = open(path).read() if osp.isfile(path) else ''
    parts = re.split(r'^(?=## )', old, flags=re.M)
    old_head, blocks = parts[0], {}
    for part in parts[1:]:
        blocks[part.splitlines()[0][3:].strip()] = part.rstrip('\n') + '\n'
    for title, rows in sections:
        blocks[title] = '\n'.join([f'## {title}', ''] + rows) + '\n'
    text = ('\n'.join(head) + '\n' if head is not None else old_head.rstrip('\n') + '\n')
    text += ''.join('\n' + blocks[t] for t in sorted(blocks))
    atomic_write(path, text)
    return text


def replace_marked(path: str, name: str, lines: List[str]) -> str:
    """Replace the lines between ``<!-- begin: name -->`` and ``<!-- end: name -->`` of the
    markdown file ``path`` by ``lines`` (the markers stay). Written atomically; returns
    the text. ValueError naming the markers when the file lacks them."""
    begin, end = f'<!-- begin: {name} -->', f'<!-- end: {name} -->'
    text = open(path).read()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f'{path} has no "{begin}" ... "{end}" block to write into: add the '
                         'two marker lines where the generated text belongs')
    text = text[:i + len(begin)] + '\n' + '\n'.join(lines) + '\n' + text[j:]
    atomic_write(path, text)
    return text


def add_readme_argument(parser, block: str) -> None:
    """``--readme FILE``: a tool's option to also write its generated summary into FILE
    between the ``block`` markers (:func:`replace_marked`)."""
    parser.add_argument('--readme', help='also write the summary into this file (README.md) '
                        f'between its "<!-- begin: {block} -->" / "<!-- end: {block} -->" '
                        'lines')


def check_readme(path: Optional[str], block: str) -> None:
    """Before anything is measured: :class:`gdp_det.cli.UserError` naming the fix unless
    ``path`` (None: no ``--readme``) holds the ``block`` markers."""
    from ..cli import UserError
    if path and block not in (open(path).read() if osp.isfile(path) else ''):
        raise UserError(f'--readme {path}: no "<!-- begin: {block} -->" / '
                        f'"<!-- end: {block} -->" lines to write between; add them')


def markdown_table(rows: List[Dict], columns: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f'{v:.4g}'
        return str(v)
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |' for r in rows]
    return '\n'.join(lines)


def report_rows(prune_report: dict, ev: Dict[str, Optional[dict]],
                finetune_epochs: int) -> List[Dict]:
    """The table rows of the baseline, the pruned model and (if evaluated) the
    fine-tuned one, from the export's ``prune_report`` and the evaluations ``ev``."""
    rows = [dict(model='baseline', mAP=ev['baseline']['mAP'],
                 GFLOPs=prune_report['flops_before'] / 1e9,
                 **{'FLOPs ratio': 1.0, 'params (M)': prune_report['params_before'] / 1e6,
                    'latency (ms)': ev['baseline']['latency_ms']})]
    pruned = {'GFLOPs': prune_report['flops_after'] / 1e9,
              'FLOPs ratio': prune_report['flops_ratio'],
              'params (M)': prune_report['params_after'] / 1e6}
    rows.append(dict(model='GDP pruned (no fine-tune)', mAP=ev['pruned']['mAP'], **pruned,
                     **{'latency (ms)': ev['pruned']['latency_ms'],
                        'max output diff': prune_report.get('max_rel_output_diff')}))
    if ev.get('finetuned'):
        rows.append(dict(model=f'GDP pruned + {finetune_epochs} ep fine-tune',
                         mAP=ev['finetuned']['mAP'], **pruned,
                         **{'latency (ms)': ev['finetuned']['latency_ms']}))
    return rows


def write_report(work_dir: str, rows: List[Dict], prune_report: dict, extra_md: str = '') -> None:
    """``report.json`` + ``report.md`` with one row per model (baseline, pruned...)."""
    figures = plot_run(prune_report, work_dir)
    columns = ['model', 'mAP', 'GFLOPs', 'FLOPs ratio', 'params (M)', 'latency (ms)',
               'max output diff']
    md = ['# GDP pruning report', '', markdown_table(rows, columns), '']
    if extra_md:
        md += [extra_md, '']
    md += [f'![{osp.basename(f)}]({osp.basename(f)})' for f in figures]
    atomic_write(osp.join(work_dir, 'report.md'), '\n'.join(md) + '\n')
    atomic_write(osp.join(work_dir, 'report.json'),
                 json.dumps(dict(rows=rows, figures=[osp.basename(f) for f in figures]),
                            indent=2))
