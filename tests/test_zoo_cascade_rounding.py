"""DetectoRS (``cascade-rcnn_r50-sac_1x_coco.py``) as ``tools/zoo_check.py`` builds it.

With mmdet's init, its backbone (SAC, RFP) and neck give features of ~1e5 and its
cascade RoI head box deltas of hundreds (through a clamped ``exp``): float32 rounding
of ~1e-7 in the first stage's boxes becomes ~1e-2 in the last stage's outputs, with
no selection flipped. The pruning is exact: extracted in float64, everything up to
the RoI head equals the gated model and the outputs agree to ~1e-8. The float32
verification failed (0.0119 > 1e-4); it is now repeated in float64
(:func:`gdp_det.api._verified`), and still fails for a wrongly pruned model.
Whether float32 rounding differs at all depends on the processor: the test makes the
difference itself, one ulp in the stem conv's weights.
"""
import copy
import os.path as osp

import pytest
import torch

from gdp_det.api import prune_and_export
from gdp_det.pruner import extract_pruned
from test_zoo_selections import SIZE
from tools import zoo_check
from tools.zoo_configs import ZOO


def nudged_by_rounding(model, *args):
    """:func:`extract_pruned`, then in float32 the stem conv's weights one ulp up: the
    rounding difference a pruned conv's other kernel makes, made on every machine (how
    much two kernels' float32 results differ, if at all, depends on the processor)."""
    result = extract_pruned(model, *args)
    stem = model.backbone.conv1.weight
    if stem.dtype == torch.float32:
        with torch.no_grad():
            stem.copy_(torch.nextafter(stem, torch.full_like(stem, float('inf'))))
    return result


@pytest.mark.slow
def test_cascade_amplified_rounding_is_verified_in_float64(tmp_path, monkeypatch):
    from gdp_det import api
    path = osp.join(zoo_check.configs_dir(), 'detectors', ZOO['detectors'])
    cfg, gated = zoo_check.build_gated(path, 'detectors', SIZE, 0.5, 0)
    monkeypatch.setattr(api, 'extract_pruned', nudged_by_rounding)
    _, report, paths = prune_and_export(cfg, gated, str(tmp_path), name='detectors')
    assert report['verified_in'] == 'float64'
    assert report['float32_max_rel_output_diff'] > 1e-3  # amplified rounding
    assert report['replayed_decisions'] == 0  # no selection flipped
    assert report['max_rel_output_diff'] < 1e-6  # float64: exact
    assert report['predict_check']['matched_share'] == 1.0
    # the export is the float32 copy of the model verified in float64
    exported = torch.load(paths[1], weights_only=False)['state_dict']
    verified = copy.deepcopy(gated).double()
    extract_pruned(verified)
    assert all(torch.equal(exported[k], v.to(exported[k].dtype))
               for k, v in verified.state_dict().items())


def test_wrong_pruning_fails_in_float64_too(tmp_path, monkeypatch):
    """A pruner that changes one weight by 1e-3 fails in both precisions."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from conftest import REPO
    from gdp_det import api
    from gdp_det.cli import gdp_model_cfg, load_config
    register_all_modules()
    cfg = load_config(f'{REPO}/configs/toy/retinanet_r18_fpn_toyvoc.py')
    cfg.model = gdp_model_cfg(cfg, (128, 128))
    torch.manual_seed(0)
    gated = MODELS.build(cfg.model)
    with torch.no_grad():
        gated.gdp_gates.a.uniform_(0.5, 1.5)

    def wrong(model, *args):
        result = extract_pruned(model, *args)
        with torch.no_grad():
            model.neck.fpn_convs[0].conv.weight.mul_(1 + 1e-3)
        return result
    monkeypatch.setattr(api, 'extract_pruned', wrong)
    with pytest.raises(RuntimeError, match=r'difference \S+ > 0.0001 \(float32\); in float64: '
                                           r'max relative output difference'):
        api.prune_and_export(cfg, gated, str(tmp_path), name='r18')
