"""Benchmarks built on the core and the main job, imported by neither.

- :mod:`.compare`: the pruner comparison (``tools/benchmark_compare.py``,
  ``make compare``), resumable run by run;
- :mod:`.compare_methods`: the methods it compares (GDP and its variants, the
  no-pruning control, random channels, Torch-Pruning's criteria);
- :mod:`.compare_summary`: its tables, equal-latency matching, README lines and plot.
"""
