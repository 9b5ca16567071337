"""Zoo exports the verification refused because a selection flipped at a near-tie.

Built as ``tools/zoo_check.py`` builds them (256x256, seeded random init, half of the
gates zeroed), these pruned models equal the gated ones to ~1e-7, but a selection made
on values tied to float rounding comes out differently: SOLO's point NMS
(``local_max == score``) keeps the other of two tied grid cells, DINO's top-k and DDQ's
NMS order the same encoder queries differently, Soft Teacher's RPN sorts its proposals
differently, and an untrained RetinaNet head (EfficientNet's) scores every anchor
within 1e-7 of the others, so NMS keeps other boxes. The outputs then differed by
0.2-0.9 and the verification failed. It now replays the gated model's decisions on
the pruned one and compares their inputs (:mod:`gdp_det.decisions`).
"""
import copy
import os.path as osp

import pytest
import torch

from gdp_det.api import _matched, _predict, max_prediction_difference, output_difference
from gdp_det.decisions import relative_difference
from gdp_det.detector import detector_forward_fn
from gdp_det.graph import flat_tensors
from gdp_det.pruner import extract_pruned
from tools import zoo_check
from tools.zoo_configs import ZOO

SIZE = (256, 256)


@pytest.fixture(autouse=True)
def single_thread():
    """As the zoo check's worker runs: which near-tie flips depends on the summation
    order, so on the thread count (with 2 threads DINO's and DDQ's do not flip)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gated_and_pruned(folder: str, seed: int):
    path = osp.join(zoo_check.configs_dir(), folder, ZOO[folder])
    _, gated = zoo_check.build_gated(path, folder, SIZE, 0.5, seed)
    pruned = copy.deepcopy(gated)
    extract_pruned(pruned)
    return gated, pruned


@torch.no_grad()
def unreplayed_difference(gated, pruned, seed: int) -> float:
    """What the verification measured before: tensor outputs, position by position."""
    outs = []
    for m in (gated, pruned):
        m.eval()
        torch.manual_seed(seed)
        outs.append(flat_tensors(detector_forward_fn(SIZE)(m)))
    return max(relative_difference(x, y) for x, y in zip(*outs))


@pytest.mark.slow
@pytest.mark.parametrize('folder, seed, input_seed', [
    ('solo', 0, 0), ('dino', 1, 1), ('ddq', 2, 1), ('soft_teacher', 0, 0)])
def test_tensor_mode_selection_flip_is_replayed(folder, seed, input_seed):
    gated, pruned = gated_and_pruned(folder, seed)
    assert unreplayed_difference(gated, pruned, input_seed) > 0.1  # the flip
    result = output_difference(gated, pruned, SIZE, seeds=(input_seed, ))
    assert result['replayed'] >= 1 and result['max_diff'] <= 1e-4


@pytest.mark.slow
def test_ddq_level_embed_is_initialised():
    """``level_embed`` is allocated with ``torch.Tensor(...)``: before ``init_weights``
    it held whatever memory was there (NaN after another model ran: 0 % matched)."""
    gated, _ = gated_and_pruned('ddq', 2)
    assert 0.5 < float(gated.level_embed.std()) < 2  # normal_ init


@pytest.mark.slow
def test_nms_over_tied_scores_is_replayed(monkeypatch):
    """With torch's default init (no mmdet ``init_weights``, as the zoo check built it
    before), EfficientNet-RetinaNet's head scores every anchor within 1e-7 of 0.5."""
    from mmengine.model import BaseModule
    monkeypatch.setattr(BaseModule, 'init_weights', lambda self: None)
    gated, pruned = gated_and_pruned('efficientnet', 0)
    h, w = SIZE
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    meta = dict(img_shape=SIZE, ori_shape=SIZE, pad_shape=SIZE, scale_factor=(1., 1.),
                batch_input_shape=SIZE)
    with torch.no_grad():
        a, b = _predict(gated, img, meta), _predict(pruned, img, meta)
    assert float(_matched(a, b, 1e-4, 1e-3)[0].float().mean()) < 0.9  # other boxes kept
    check = max_prediction_difference(gated, pruned, SIZE)
    assert check['replayed'] >= 1 and check['decision_diff'] <= 1e-4
    assert check['matched_share'] == 1.0 and check['max_diff'] <= 1e-6


@pytest.mark.slow
def test_solo_predict_check_compares_detections():
    """SOLO filters its instances at ``filter_thr`` (0.05) and drops those whose mask
    binarised at ``mask_thr`` is empty: with mmdet's init every score is about 0.01 and
    every mask empty, so the check compared 0 detections until those were zeroed too."""
    gated, pruned = gated_and_pruned('solo', 0)
    check = max_prediction_difference(gated, pruned, SIZE)
    assert check['num_dets'] > 0 and check['matched_share'] >= 0.9
