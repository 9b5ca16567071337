"""The figures of a GDP run (PNG): gate histograms through training, the FLOPs ratio
against its target and the per-layer widths before/after.

matplotlib is the optional ``report`` extra (``pip install gdp-det[report]``): it is
imported on the first figure, so importing this module does not need it.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import List


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError('plots need matplotlib: pip install "gdp-det[report]"') from e
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def gate_histograms(plt, report: dict):
    """Share of channels per gate value at each snapshot (polarization)."""
    snaps, bins = report['snapshots'], report['hist_bins']
    n = len(snaps)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], snaps):
        it, zeros, counts = int(s[0]), s[1], s[2:]
        total = zeros + sum(counts)
        ax.bar([-0.05], [zeros / total], width=0.05, color='tab:red', label='exactly 0')
        ax.bar(bins[:-1], [c / total for c in counts], width=bins[1] - bins[0], align='edge',
               color='tab:blue', label='g > 0')
        ax.set_title(f'iter {it}')
        ax.set_xlabel('gate value g')
    axes[0][0].set_ylabel('share of channels')
    axes[0][0].legend(fontsize=7)
    fig.suptitle('GDP gate values during training (polarization)')
    return fig


def flops_ratio(plt, report: dict):
    """The exact FLOPs ratio per iteration against its target."""
    hist = report['history']
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h[0] for h in hist], [h[1] for h in hist], label='FLOPs ratio (exact, L0)')
    ax.axhline(report['flops_target'], color='tab:red', ls='--', label='target')
    ax.set_xlabel('iteration')
    ax.set_ylabel('FLOPs / unpruned FLOPs')
    ax.set_ylim(0, 1.05)
    ax.legend()
    return fig


def layer_widths(plt, report: dict):
    """Output channels per layer before and after pruning."""
    widths = report['layer_widths']
    names = list(widths)
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(names)), 4))
    xs = range(len(names))
    ax.bar(xs, [widths[n][0] for n in names], color='lightgray', label='before')
    ax.bar(xs, [widths[n][1] for n in names], color='tab:blue', label='after')
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylabel('output channels')
    ax.legend()
    return fig


#: (prune-report key the figure needs, drawing function, file name)
FIGURES = (('snapshots', gate_histograms, 'gate_histograms.png'),
           ('history', flops_ratio, 'flops_ratio.png'),
           ('layer_widths', layer_widths, 'layer_widths.png'))


def plot_run(report: dict, out_dir: str) -> List[str]:
    """Draw every figure the report has data for; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, draw, fname in FIGURES:
        if report.get(key):
            plt = _pyplot()
            fig = draw(plt, report)
            fig.tight_layout()
            path = osp.join(out_dir, fname)
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths
