"""The main job, built on the core: baseline -> GDP phase -> prune/export -> fine-tune
-> evaluate -> report (``tools/gdp_prune_pipeline.py``, ``make demo``).

Not imported by ``import gdp_det``: the library (tracing, gates, hook, pruner,
export) works without it.
"""
from .stages import evaluate, gdp_config, phase_schedule, run_pipeline, stage, train

__all__ = ['evaluate', 'gdp_config', 'phase_schedule', 'run_pipeline', 'stage', 'train']
