"""The main job, built on the core: baseline -> GDP phase -> prune/export -> fine-tune
-> evaluate -> report (``tools/gdp_prune_pipeline.py``, ``make demo``).

- :mod:`.schedule`: the phases' configs (``gdp_config``, ``phase_schedule``);
- :mod:`.stages`: one resumable stage, trained or evaluated through mmengine's
  ``Runner``, on one process or under torchrun;
- :mod:`.job`: ``run_pipeline``, every stage in order;
- :mod:`.report`, :mod:`.plots`: ``report.md`` / ``report.json`` and the figures.

Not imported by ``import gdp_det``: the library (tracing, gates, hook, pruner,
export) works without it, and matplotlib is imported only when a figure is drawn.
"""
from .job import run_pipeline
from .schedule import gdp_config, phase_schedule
from .stages import evaluate, stage, stage_result, train

__all__ = ['evaluate', 'gdp_config', 'phase_schedule', 'run_pipeline', 'stage', 'stage_result',
           'train']
