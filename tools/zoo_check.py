#!/usr/bin/env python
"""Run the prune self-check over one config of every detector folder of mmdet's zoo.

    OMP_NUM_THREADS=1 python tools/zoo_check.py [--cache-dir DIR] [--md FILE] [--only NAME ...]

For each folder of ``mmdet/.mim/configs`` (detection and instance segmentation) the
simplest R50/base config is built with mmdet's random init (``init_weights``, seeded;
no pretrained weights), a random half of every group's gates is zeroed
(``--random-gates 0.5 --seed 0``), and the model is pruned, exported, rebuilt from disk
and compared with the gated model (``tools/prune.py ... --verify``, in-process, with
the modules the tracer cannot follow kept). Each config runs in a
forked worker with a timeout; its result is one JSON file in the cache dir (written
atomically), so a rerun skips the finished ones. The table goes to ``--md``.
"""
import argparse
import json
import multiprocessing as mp
import os
import os.path as osp
import re
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()
from gdp_det.cli import ArgumentParser, describe_error, tool_main  # noqa: E402
from tools.zoo_configs import (CFG_OPTIONS, INPUT_SIZE, NEEDS, NOTES, SKIPPED,  # noqa: E402
                                 ZOO)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--cache-dir', default='work_dirs/zoo_check',
                   help='one JSON result per config; a rerun skips those present')
    p.add_argument('--md', default='benchmarks/zoo_coverage.md', help='table to write')
    p.add_argument('--only', nargs='+', metavar='FOLDER', help='check these folders only')
    p.add_argument('--input-size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'))
    p.add_argument('--timeout', type=float, default=300, help='seconds per config')
    p.add_argument('--random-gates', type=float, default=0.5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--tolerance', type=float, default=1e-4)
    return p.parse_args(argv)


def configs_dir() -> str:
    import mmdet
    return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')


def plan(root: str, only=None):
    """``[(folder, config file or None, why skipped)]`` for every folder of ``root``."""
    rows = []
    for folder in sorted(os.listdir(root)):
        if not osp.isdir(osp.join(root, folder)) or folder.startswith('__'):
            continue
        if only and folder not in only:
            continue
        need = NEEDS.get(folder)
        if folder in SKIPPED:
            rows.append((folder, None, SKIPPED[folder]))
        elif need and not _installed(need):
            rows.append((folder, ZOO[folder], f'needs {need}, not installed here'))
        elif folder not in ZOO:
            rows.append((folder, None, 'no config chosen for this folder (new in mmdet?)'))
        else:
            rows.append((folder, ZOO[folder], None))
    return rows


def _installed(package: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(package) is not None


def shorten(names) -> list:
    """Module paths with numeric indices folded: ``a.0.b``, ``a.1.b`` -> ``a.*.b (x2)``."""
    counts: dict = {}
    for n in names:
        key = re.sub(r'\.\d+(?=\.|$)', '.*', n)
        counts[key] = counts.get(key, 0) + 1
    return [k if c == 1 else f'{k} (x{c})' for k, c in counts.items()]


def check_one(path: str, folder: str, input_size, share: float, seed: int,
              tolerance: float) -> dict:
    """The self-check of one config; every outcome is a result dict, never a raise."""
    start = time.time()
    out_dir = tempfile.mkdtemp(prefix='gdp_zoo_')
    row = dict(folder=folder, config=osp.basename(path))
    try:
        row.update(_prune_check(path, folder, input_size, share, seed, tolerance, out_dir))
    except Exception as e:  # noqa: BLE001 - every failure becomes a named row
        from gdp_det.cli import UserError
        from gdp_det.detector import UnsupportedModuleError
        refused = isinstance(e, (UserError, UnsupportedModuleError))  # said on purpose
        row.update(result='refused' if refused else 'failed', error=describe_error(e)[0],
                   where=_where(e))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    row['seconds'] = round(time.time() - start, 1)
    return row


def _where(e: BaseException) -> str:
    """``file:line`` of the innermost frame (shortened to the package path)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ''
    f = tb.tb_frame.f_code.co_filename
    return f"{re.sub(r'^.*site-packages/', '', f)}:{tb.tb_lineno}"


def build_gated(path: str, folder: str, input_size, share: float, seed: int):
    """``(cfg, model)``: the config of ``path`` (with its ``CFG_OPTIONS``) as a
    ``GDPDetector`` built with mmdet's random init (seeded) and a random ``share`` of
    every group's gates zeroed."""
    from mmdet.utils import register_all_modules
    from gdp_det.cli import build_randomly_initialised, gdp_model_cfg, load_config
    from tools.prune import randomize_gates
    register_all_modules(init_default_scope=True)
    cfg = load_config(path)
    cfg.merge_from_dict({f'model.{k}': v for k, v in CFG_OPTIONS.get(folder, {}).items()})
    if isinstance(cfg.model.get('teacher_config'), str):
        cfg.model.teacher_config = osp.join(configs_dir(), cfg.model.teacher_config)
    _no_sync_bn(cfg.model)
    cfg.model = gdp_model_cfg(cfg, input_size, (), on_unsupported='keep')
    model = build_randomly_initialised(cfg.model, seed)  # reproducible
    randomize_gates(model.gdp_gates, share, seed)
    return cfg, model


def _prune_check(path, folder, input_size, share, seed, tolerance, out_dir) -> dict:
    from gdp_det.api import prune_and_export
    from gdp_det.detector import unprunable_share
    cfg, model = build_gated(path, folder, input_size, share, seed)
    graph = model.gdp_gates.graph
    _, report, _ = prune_and_export(cfg, model, out_dir, name=folder, verify=True,
                                    tolerance=tolerance, force=True)
    kept = sorted(graph.unsupported)
    return dict(result='pruned, modules kept' if kept else 'lossless',
                flops_ratio=report['flops_ratio'], groups=len(graph.groups),
                kept=shorten(kept), kept_ops=sorted(set(graph.unsupported.values())),
                unprunable_share=unprunable_share(graph),
                max_diff=report['max_rel_output_diff'], predict_check=report['predict_check'])


def _no_sync_bn(cfg) -> None:
    """(MM)SyncBN -> BN everywhere in ``cfg`` (they need a process group; one CPU
    process has none; the two compute the same in eval mode)."""
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg)
    for k, v in items:
        if isinstance(v, (dict, list)):
            _no_sync_bn(v)
        elif k == 'type' and v in ('SyncBN', 'MMSyncBN'):
            cfg[k] = 'BN'


def _worker(path, folder, input_size, args, out_json):
    # a forked child whose parent already ran OpenMP-parallel torch ops hangs in its
    # first parallel region (GNU OpenMP is not fork-safe): one thread, as torch's own
    # DataLoader workers do
    torch.set_num_threads(1)
    row = check_one(path, folder, input_size, args.random_gates, args.seed, args.tolerance)
    write_json(out_json, row)


def write_json(path: str, obj) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_forked(path, folder, input_size, args, out_json) -> dict:
    """Run one check in a forked worker; a timeout or a dead worker is a row too."""
    start = time.time()
    proc = mp.get_context('fork').Process(target=_worker,
                                          args=(path, folder, input_size, args, out_json))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        row = dict(result='failed', error=f'timeout after {args.timeout:g} s')
    elif not osp.isfile(out_json):
        row = dict(result='failed', error=f'worker died (exit code {proc.exitcode})')
    else:
        with open(out_json) as f:
            return json.load(f)
    row.update(folder=folder, config=osp.basename(path), seconds=round(time.time() - start, 1))
    write_json(out_json, row)
    return row


def _fmt_predict(p) -> str:
    if not p:
        return ''
    if 'skipped' in p:
        return f"skipped ({p['skipped'][:60]})"
    return f"{p['num_dets']} dets, diff {p['max_diff']:.1e}"


def write_md(path: str, rows, results: dict, args) -> dict:
    """The coverage table; returns the counts per result."""
    import mmdet
    counts: dict = {}
    lines = []
    for folder, config, why in rows:
        r = results.get(folder)
        if why is not None:
            counts['skipped'] = counts.get('skipped', 0) + 1
            lines.append(f'| {folder} | {config or ""} | skipped: {why} | | | | | | |')
            continue
        if r is None:
            counts['not run yet'] = counts.get('not run yet', 0) + 1
            lines.append(f'| {folder} | {config} | not run yet | | | | | | |')
            continue
        counts[r['result']] = counts.get(r['result'], 0) + 1
        if 'error' in r:
            err = r['error'].replace('|', '/')[:200]
            where = f" ({r['where']})" if r.get('where') else ''
            lines.append(f"| {folder} | {config} | **{r['result']}**: {err}{where} "
                         f"| | | | | | {r['seconds']:.0f} |")
            continue
        kept = ', '.join(f'`{k}`' for k in r['kept'][:8])
        kept += f" (+{len(r['kept']) - 8} more)" if len(r['kept']) > 8 else ''
        ops = f"<br>ops: {', '.join(r['kept_ops'])}" if r['kept_ops'] else ''
        lines.append(f"| {folder} | {config} | {r['result']} | {r['flops_ratio']:.3f} "
                     f"| {100 * r['unprunable_share']:.1f}% | {kept}{ops} "
                     f"| {r['max_diff']:.1e} | {_fmt_predict(r['predict_check'])} "
                     f"| {r['seconds']:.0f} |")
    total = sum(v for k, v in counts.items() if k != 'skipped')
    head = [
        '# Coverage of the mmdet model zoo',
        '',
        f'Written by `tools/zoo_check.py` (mmdet {mmdet.__version__}): one config per folder of '
        f"`mmdet/.mim/configs`, built with mmdet's random init (torch seed {args.seed}) at "
        f'{args.input_size[0]}x{args.input_size[1]}, a random {args.random_gates:g} of every '
        f"group's gates zeroed (seed {args.seed}), pruned, exported, rebuilt from disk and "
        'compared with the gated model (tensor outputs: max relative difference, tolerance '
        f'{args.tolerance:g}; predict mode: detections after NMS). Modules the tracer cannot '
        "follow are kept (`on_unsupported='keep'`).",
        '',
        f'**{total} configs checked: ' + ', '.join(
            f'{counts[k]} {k}' for k in ('lossless', 'pruned, modules kept', 'refused',
                                          'failed', 'not run yet') if counts.get(k))
        + f"; {counts.get('skipped', 0)} folders skipped.**",
        '',
        '*FLOPs ratio*: FLOPs after / before pruning. *Unprunable*: the share of FLOPs that '
        'stays even with every prunable channel removed (layers whose input and output '
        'channels are both fixed; FLOPs are those of conv/linear layers: compiled ops such as '
        "mmcv's deformable conv and attention's matmuls are not counted). *Kept modules*: "
        'modules the tracer cannot follow (their channels stay unpruned; real module paths, '
        'numeric indices folded to `*`), with the ops it met there. *Predict check*: '
        'detections after NMS of the gated and the rebuilt export on one image, score '
        'threshold 0.',
        '',
        '| folder | config | result | FLOPs ratio | unprunable | kept modules | max output '
        'diff | predict check | time (s) |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    changed = [f for f, _, why in rows if why is None and f in CFG_OPTIONS]
    if changed:
        lines += ['', 'Checked with changed model settings (`CFG_OPTIONS` in '
                  f"`tools/zoo_configs.py`, which says why): {', '.join(changed)}."]
    notes = [f'- **{f}**: {NOTES[f]}' for f, _, _ in rows
             if f in NOTES and results.get(f, {}).get('result') in ('failed', 'refused')]
    if notes:
        lines += ['', '## Known causes of the failures', ''] + notes
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write('\n'.join(head + lines) + '\n')
    os.replace(tmp, path)
    return counts


@tool_main
def main(argv=None) -> int:
    args = parse_args(argv)
    root = configs_dir()
    rows = plan(root, args.only)
    os.makedirs(args.cache_dir, exist_ok=True)
    todo = [r for r in rows if r[2] is None
            and not osp.isfile(osp.join(args.cache_dir, f'{r[0]}.json'))]
    print(f'{len(rows)} folders, {sum(r[2] is None for r in rows)} to check, '
          f'{len(todo)} not done yet (cache: {args.cache_dir})', flush=True)
    start = time.time()
    for i, (folder, config, _) in enumerate(todo):
        size = INPUT_SIZE.get(folder, tuple(args.input_size))
        out_json = osp.join(args.cache_dir, f'{folder}.json')
        row = run_forked(osp.join(root, folder, config), folder, size, args, out_json)
        elapsed = time.time() - start
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        print(f"[{i + 1}/{len(todo)}] {folder}/{config}: {row['result']} "
              f"({row['seconds']:.0f} s) {row.get('error', '')[:120]} | elapsed "
              f'{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min', flush=True)
    results = {}
    for folder, _, why in rows:
        p = osp.join(args.cache_dir, f'{folder}.json')
        if why is None and osp.isfile(p):
            with open(p) as f:
                results[folder] = json.load(f)
    counts = write_md(args.md, rows, results, args)
    print(f'wrote {args.md}: {counts}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
