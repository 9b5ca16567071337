"""Compatibility patches for mmengine 0.10.x / mmdet 3.3.x on recent torch/setuptools.

Nothing is patched on import: :func:`apply` (idempotent) applies every patch and is
called by the entry points that need them: the tools (checkpoints, ``mmdet::`` configs,
VOC evaluation), ``GDPDetector``'s build (so a config with ``custom_imports`` gets them
before any checkpoint is loaded) and the tests' ``conftest.py``. Each patch has a test
in ``tests/test_compat.py`` that shows the upstream problem without the patch; when
that test fails, upstream is fixed and the patch can go.

1. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and
   mmengine 0.10.7 calls it without the argument (``CheckpointLoader``,
   ``Runner.resume``). A checkpoint written by mmengine's ``Runner`` holds, next
   to tensors, a ``message_hub`` state (``HistoryBuffer`` objects with numpy
   arrays and numpy scalars), ``meta`` (python and numpy values) and optimizer
   / scheduler states. We allow exactly those types through
   ``torch.serialization.add_safe_globals``; the weights-only unpickler stays
   on for everything else.
2. mmengine's ``is_installed`` / ``get_installed_path`` (used to resolve
   package-scoped configs such as ``_base_ = ['mmdet::...']``) import
   ``pkg_resources``, which recent setuptools releases no longer ship. When it
   is missing they are replaced by ``importlib.metadata`` equivalents.
3. mmdet's ``VOCMetric`` labels its per-class table with the 20 VOC class
   names for any dataset in a ``VOC2007`` folder; it now uses the dataset's
   classes (the metric values are unchanged).

:func:`apply_deploy` (called by ``gdp_det.deploy``) applies these and mmdeploy 1.3.1's
patches: torch's TorchScript ONNX exporter by default (``dynamo=False``), the
``_cast_Long`` symbolic helper torch 2.x dropped, and OpenVINO's current Python API for
mmdeploy's OpenVINO wrapper; their tests are the ``test_upstream_*`` of
``tests/test_deploy.py``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os.path as osp
import warnings
from typing import List

__all__ = ['apply', 'mmengine_safe_globals', 'register_safe_globals']


# ----------------------------------------------------------------------------
# torch.load(weights_only=True) and mmengine checkpoints
# ----------------------------------------------------------------------------
def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` inside ``torch.load(weights_only=True)``.

    ``HistoryBuffer.__getstate__`` stores its statistics methods
    (``HistoryBuffer.min`` ...), which pickle as ``getattr(HistoryBuffer,
    'min')``. Allowing the real ``getattr`` would let a checkpoint reach any
    attribute of any allowed object; this one only returns public statistics
    methods of ``HistoryBuffer``.
    """
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = {'min', 'max', 'current', 'mean'}
    allowed.update(k for k in HistoryBuffer._statistics_methods
                   if isinstance(k, str))
    if (obj is HistoryBuffer and isinstance(name, str)
            and not name.startswith('_') and name in allowed):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        'weights_only load: getattr is only allowed for HistoryBuffer '
        f'statistics methods, not ({obj!r}, {name!r})')


def mmengine_safe_globals() -> List[object]:
    """What ``add_safe_globals`` gets: the non-tensor types that checkpoints
    of mmengine's ``Runner`` (and mmdet's hooks) contain.

    Found by saving checkpoints with a ``Runner`` and reading the globals
    that ``torch.serialization.get_unsafe_globals_in_checkpoint`` names:

    * ``message_hub.log_scalars``: ``HistoryBuffer`` whose ``_log_history`` /
      ``_count_history`` are numpy arrays (``_reconstruct``, ``ndarray``,
      ``dtype`` and, for ``BUILD`` of the dtype, its class such as
      ``numpy.dtypes.Float64DType``), and whose ``statistics_methods`` are
      ``getattr(HistoryBuffer, 'min')`` etc. (see
      :func:`_history_buffer_getattr`);
    * ``message_hub.runtime_info`` and ``meta``: numpy scalars
      (``numpy._core.multiarray.scalar``);
    * ``ConfigDict`` / ``Config`` objects that code may put into ``meta``.
    """
    import numpy as np
    from mmengine.config import Config, ConfigDict
    from mmengine.logging.history_buffer import HistoryBuffer

    globs: List[object] = [HistoryBuffer, ConfigDict, Config]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    globs += [_reconstruct, scalar, np.ndarray, np.dtype]
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        globs += [
            getattr(dtypes, n) for n in sorted(dir(dtypes))
            if n.endswith('DType') and isinstance(getattr(dtypes, n), type)
        ]
    globs.append((_history_buffer_getattr, 'builtins.getattr'))
    return globs


def register_safe_globals() -> None:
    """Allow :func:`mmengine_safe_globals` in ``torch.load(weights_only=True)``.

    Safe to call more than once.
    """
    import torch.serialization as ts
    add = getattr(ts, 'add_safe_globals', None)
    if add is None:  # torch < 2.4: weights_only is not the default anyway
        return
    known = ts.get_safe_globals()
    new = [g for g in mmengine_safe_globals() if g not in known]
    if new:
        add(new)


# ----------------------------------------------------------------------------
# pkg_resources-free package lookups for mmengine
# ----------------------------------------------------------------------------
def _distribution(package: str):
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """``mmengine.utils.is_installed`` without ``pkg_resources``."""
    if _distribution(package) is not None:
        return True
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None


def package2module(package: str) -> str:
    """``mmengine.utils.package_utils.package2module`` without
    ``pkg_resources``."""
    dist = _distribution(package)
    if dist is None:
        raise ValueError(f'can not infer the module name of {package}')
    top = dist.read_text('top_level.txt')
    if top:
        return top.split('\n')[0]
    raise ValueError(f'can not infer the module name of {package}')


def get_installed_path(package: str) -> str:
    """``mmengine.utils.get_installed_path`` without ``pkg_resources``."""
    dist = _distribution(package)
    if dist is None:
        spec = importlib.util.find_spec(package)
        if spec is not None:
            if spec.origin is not None:
                return osp.dirname(spec.origin)
            raise RuntimeError(
                f'{package} is a namespace package, which is invalid '
                'for `get_install_path`')
        raise importlib.metadata.PackageNotFoundError(package)
    # the module may live outside site-packages (editable installs): ask the
    # import system first
    for name in (package, package.replace('-', '_')):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            return osp.dirname(spec.origin)
    location = str(dist.locate_file(''))
    possible_path = osp.join(location, package)
    if osp.exists(possible_path):
        return possible_path
    return osp.join(location, package2module(package))


def patch_package_utils() -> None:
    """Use the ``importlib.metadata`` lookups above in mmengine when ``pkg_resources``
    cannot be imported."""
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    import mmengine.config.config as config_mod
    import mmengine.utils as utils_mod
    import mmengine.utils.package_utils as pu
    for mod in (pu, utils_mod, config_mod):
        for name, fn in (('is_installed', is_installed),
                         ('get_installed_path', get_installed_path),
                         ('package2module', package2module)):
            if hasattr(mod, name):
                setattr(mod, name, fn)
    try:
        import mmengine.hub.hub as hub_mod
        hub_mod.get_installed_path = get_installed_path
    except ImportError:
        pass


# ----------------------------------------------------------------------------
# VOCMetric's per-class table for datasets with their own classes
# ----------------------------------------------------------------------------
def patch_voc_metric_class_names() -> None:
    """Print the dataset's own class names in ``VOCMetric``'s table.

    mmdet 3.3.0's ``VOCMetric`` passes ``dataset='voc'`` to ``eval_map`` for
    any dataset whose folder is ``VOC2007``/``VOC2012``, so the per-class table
    is labelled 'aeroplane', 'bicycle', ... whatever the classes are. For such
    datasets with other classes we pass the class names instead; ``eval_map``
    treats 'voc' and a list of names alike (only 'det', 'vid' and the OID
    names change the computation), so the numbers do not change.
    """
    try:
        from mmdet.evaluation.functional import get_classes
        from mmdet.evaluation.metrics import voc_metric
    except ImportError:  # pragma: no cover - mmdet missing or broken
        return
    cls = voc_metric.VOCMetric
    if hasattr(cls.compute_metrics, '__wrapped__'):
        return
    orig_compute = cls.compute_metrics
    voc_classes = tuple(get_classes('voc'))

    @functools.wraps(orig_compute)  # keeps the original as ``__wrapped__``
    def compute_metrics(self, results):
        classes = tuple(self.dataset_meta.get('classes', ()) or ())
        if (self.dataset_meta.get('dataset_type') not in ('VOC2007',
                                                         'VOC2012')
                or not classes or classes == voc_classes):
            return orig_compute(self, results)
        orig_eval_map = voc_metric.eval_map

        def eval_map(*args, **kwargs):
            if isinstance(kwargs.get('dataset'), str):
                kwargs['dataset'] = list(classes)
            return orig_eval_map(*args, **kwargs)

        voc_metric.eval_map = eval_map
        try:
            return orig_compute(self, results)
        finally:
            voc_metric.eval_map = orig_eval_map

    cls.compute_metrics = compute_metrics


_applied = False


def silence_pkg_resources_warning() -> None:
    """mmengine 0.10.7's ``is_installed`` (mmengine.utils.package_utils) imports and
    reloads ``pkg_resources`` whenever a config's ``_base_`` names ``mmdet::...``, and
    setuptools >= 67.5 warns on that import that pkg_resources is deprecated:
    mmengine's to fix, not the user's, yet it opened every tool run."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


def apply() -> None:
    """Apply every patch of this module; later calls do nothing."""
    global _applied
    if _applied:
        return
    silence_pkg_resources_warning()
    register_safe_globals()
    patch_package_utils()
    patch_voc_metric_class_names()
    _applied = True


# ----------------------------------------------------------------------------
# mmdeploy 1.3 on recent torch and OpenVINO (applied by apply_deploy(), not apply())
# ----------------------------------------------------------------------------
def patch_onnx_export_legacy_default() -> None:
    """Make ``torch.onnx.export`` default to ``dynamo=False`` (the TorchScript exporter).

    torch >= 2.9 exports with the dynamo exporter unless told otherwise; mmdeploy 1.3.1
    calls ``torch.onnx.export`` without ``dynamo`` and relies on the TorchScript exporter
    (its symbolic rewrites of mmcv / torch ops and its ONNX passes hook
    ``torch.onnx.utils``), so its ``torch2onnx`` fails (the dynamo exporter needs
    onnxscript and does not see the rewrites). A caller that passes ``dynamo`` keeps its
    choice; on a torch whose ``export`` has no ``dynamo`` argument nothing changes.
    ``tests/test_deploy.py::test_upstream_mmdeploy_export_needs_dynamo_false`` shows
    the failure without this patch.
    """
    import inspect

    import torch.onnx
    export = torch.onnx.export
    if getattr(export, '_gdp_legacy_default', False):
        return
    if 'dynamo' not in inspect.signature(export).parameters:
        return

    @functools.wraps(export)
    def legacy_export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    legacy_export._gdp_legacy_default = True
    torch.onnx.export = legacy_export


def patch_mmdeploy_openvino_wrapper() -> None:
    """Run OpenVINO models in mmdeploy through the OpenVINO 2022+ API.

    mmdeploy 1.3.1's ``OpenVINOWrapper`` imports ``openvino.inference_engine``, which
    OpenVINO removed in 2024; its ``OpenVINOManager.build_wrapper`` now returns
    :class:`gdp_det.deploy.OpenVINORuntimeWrapper` (``openvino.Core``), so mmdeploy's
    ``End2EndModel`` (its pre- and post-processing) runs OpenVINO IR files. (mmdeploy's
    conversion, which runs the Model Optimizer ``mo`` that OpenVINO 2025 no longer
    ships, is not patched: :func:`gdp_det.deploy.onnx_to_openvino` converts instead.)
    ``tests/test_deploy.py::test_upstream_mmdeploy_openvino_needs_new_api`` shows the
    failure without this patch.
    """
    from mmdeploy.backend.openvino.backend_manager import OpenVINOManager
    if getattr(OpenVINOManager.build_wrapper, '_gdp_patched', False):
        return

    def build_wrapper(cls, backend_files, device='cpu', input_names=None,
                      output_names=None, deploy_cfg=None, **kwargs):
        from .deploy import OpenVINORuntimeWrapper
        return OpenVINORuntimeWrapper(backend_files[0], output_names=output_names)

    build_wrapper._gdp_patched = True
    OpenVINOManager.build_wrapper = classmethod(build_wrapper)


def patch_onnx_symbolic_cast_long() -> None:
    """Give ``torch.onnx.symbolic_opset9`` back its ``_cast_Long`` (a Cast to int64).

    mmdeploy 1.3.1's ONNX symbolic of mmcv's ``RoIAlign`` (two-stage detectors' RoI
    extractors, for ONNX Runtime) imports it; torch 2.x dropped the ``_cast_<Type>``
    helpers, so the export of Faster R-CNN fails with an ``ImportError``.
    ``tests/test_deploy.py::test_upstream_mmdeploy_roi_align_needs_cast_long`` shows it.
    """
    import torch.onnx.symbolic_opset9 as opset9
    if hasattr(opset9, '_cast_Long'):
        return

    def _cast_Long(g, input, non_blocking=False):
        from torch.onnx import TensorProtoDataType
        return g.op('Cast', input, to_i=TensorProtoDataType.INT64)

    opset9._cast_Long = _cast_Long


def apply_deploy() -> None:
    """:func:`apply`, and the patches mmdeploy needs on this stack (torch's legacy ONNX
    exporter by default; OpenVINO's current API when mmdeploy's OpenVINO support is
    importable). Called by ``gdp_det.deploy``; later calls do nothing."""
    apply()
    patch_onnx_export_legacy_default()
    patch_onnx_symbolic_cast_long()
    if importlib.util.find_spec('openvino') is not None:
        patch_mmdeploy_openvino_wrapper()
