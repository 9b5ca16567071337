"""GDP channel pruning for MMDetection 3.x.

Importing the package registers ``GDPDetector``, ``GDPPrunedModule`` (MODELS) and
``GDPHook`` (HOOKS) into mmdet's registries; configs load it with
``custom_imports = dict(imports=['gdp_det'], allow_failed_imports=False)``. It patches
nothing: the compatibility patches of :mod:`gdp_det.compat` are applied by
``compat.apply()``, which the tools and ``GDPDetector``'s build call.

This loads the core (``graph/``, gates, FLOPs model, hook, pruner, export). The main
job (:mod:`gdp_det.pipeline`), the pruner comparison (:mod:`gdp_det.benchmark`) and
the toy dataset (:mod:`gdp_det.datasets`) are subpackages built on it, imported on
their own.
"""
from . import compat  # noqa: F401  (gdp_det.compat.apply() for entry points)
from . import registry  # noqa: F401

__version__ = "0.1.0"
