"""Registers gdp_det's parts into mmdet's registries (done on ``import gdp_det``)."""
from mmdet.registry import HOOKS, MODELS

from .detector import build_gdp_detector
from .distill import DistillHook
from .hooks import GDPHook
from .pruned_module import build_pruned_module
from .selection_trace import SelectionTraceHook

MODELS.register_module('GDPDetector', module=build_gdp_detector)
MODELS.register_module('GDPPrunedModule', module=build_pruned_module)
HOOKS.register_module('GDPHook', module=GDPHook)
HOOKS.register_module('DistillHook', module=DistillHook)
HOOKS.register_module('SelectionTraceHook', module=SelectionTraceHook)
