"""Zoo exports the verification refused because a selection flipped at a near-tie.

Built as ``tools/zoo_check.py`` builds them (256x256, seeded random init, half of the
gates zeroed), these pruned models equal the gated ones to ~1e-7, but a selection made
on values tied to float rounding can come out differently: SOLO's point NMS
(``local_max == score``) keeps the other of two tied grid cells, DINO's top-k and DDQ's
NMS order the same encoder queries differently, Soft Teacher's RPN sorts its proposals
differently, and an untrained RetinaNet head (EfficientNet's) scores anchors within
1e-7 of each other, so NMS keeps other boxes. The outputs then differed by 0.2-0.9 and
the verification failed. It now replays the gated model's decisions on the pruned one
and compares their inputs (:mod:`gdp_det.decisions`).

Which way rounding breaks a given tie depends on the processor, so these tests do not
wait for a flip: :func:`forced_flips.forced_flip` makes the pruned model's decision
come out the other way on every machine. Each test shows the flip breaks the
verification without the replay (``_same`` patched to accept any result) and that
the verification with the replay passes.
"""
import copy
import os.path as osp

import pytest
import torch

from forced_flips import forced_flip
from gdp_det import decisions
from gdp_det.api import max_prediction_difference, output_difference
from gdp_det.pruner import extract_pruned
from tools import zoo_check
from tools.zoo_configs import ZOO

SIZE = (256, 256)
TOLERANCE = 1e-4  # the export verification's


def gated_and_pruned(folder: str, seed: int):
    path = osp.join(zoo_check.configs_dir(), folder, ZOO[folder])
    _, gated = zoo_check.build_gated(path, folder, SIZE, 0.5, seed)
    pruned = copy.deepcopy(gated)
    extract_pruned(pruned)
    return gated, pruned


def without_replay(monkeypatch, check):
    """``check()`` with the replay taken out: every decision counts as the same."""
    with monkeypatch.context() as m:
        m.setattr(decisions, '_same', lambda x, y: True)
        return check()


class PointNMS(torch.nn.Module):
    """SOLO's point NMS: keeps the scores that are their 2x2 neighbourhood's maximum."""

    def forward(self, score):
        local_max = torch.nn.functional.max_pool2d(score, 2, stride=1, padding=1)
        return score * (local_max[:, :, :-1, :-1] == score)


def test_forced_flip_touches_only_the_models_own_decisions():
    """The flip is made in the model's forward, never in a comparison its caller makes
    of the outputs afterwards (there it cancelled the model's flip: on another CPU the
    flipped SOLO output was compared as equal at the one element that differed)."""
    model, other = PointNMS(), PointNMS()
    score = torch.arange(16.0).view(1, 1, 4, 4)
    with forced_flip(model, '__eq__') as flips:
        same, flipped = other(score), model(score)
        assert len(flips) == 1
        mask = flipped == same
        assert len(flips) == 1 and int((~mask).sum()) == 1
    assert torch.equal(same, PointNMS()(score)) and float(flipped.max()) < 15


@pytest.mark.slow
@pytest.mark.parametrize('folder, seed, op', [
    ('solo', 0, '__eq__'), ('dino', 1, 'topk'), ('ddq', 2, 'NMSop'),
    ('soft_teacher', 0, 'sort')])
def test_tensor_mode_selection_flip_is_replayed(folder, seed, op, monkeypatch):
    gated, pruned = gated_and_pruned(folder, seed)

    def check():
        return output_difference(gated, pruned, SIZE, seeds=(0, ))
    with forced_flip(pruned, op) as flips:
        unreplayed = without_replay(monkeypatch, check)
        assert flips and unreplayed['replayed'] == 0
        assert unreplayed['max_diff'] > 10 * TOLERANCE  # the flip fails the check
        result = check()
    assert result['replayed'] >= 1 and result['max_diff'] <= TOLERANCE


@pytest.mark.slow
def test_ddq_level_embed_is_initialised():
    """``level_embed`` is allocated with ``torch.Tensor(...)``: before ``init_weights``
    it held whatever memory was there (NaN after another model ran: 0 % matched)."""
    gated, _ = gated_and_pruned('ddq', 2)
    assert 0.5 < float(gated.level_embed.std()) < 2  # normal_ init


@pytest.mark.slow
def test_nms_flip_is_replayed_in_the_predict_check(monkeypatch):
    """EfficientNet-RetinaNet's predict: its NMS keeps another box in the pruned model
    (as with torch's default init, where the untrained head scores every anchor within
    1e-7 of 0.5)."""
    gated, pruned = gated_and_pruned('efficientnet', 0)

    def check():
        return max_prediction_difference(gated, pruned, SIZE)
    with forced_flip(pruned, 'NMSop') as flips:
        unreplayed = without_replay(monkeypatch, check)
        assert flips and unreplayed['matched_share'] < 1.0  # another box kept
        result = check()
    assert result['replayed'] >= 1 and result['decision_diff'] <= 1e-4
    assert result['matched_share'] == 1.0 and result['max_diff'] <= 1e-6


@pytest.mark.slow
def test_solo_predict_check_compares_detections():
    """SOLO filters its instances at ``filter_thr`` (0.05) and drops those whose mask
    binarised at ``mask_thr`` is empty: with mmdet's init every score is about 0.01 and
    every mask empty, so the check compared 0 detections until those were zeroed too."""
    gated, pruned = gated_and_pruned('solo', 0)
    check = max_prediction_difference(gated, pruned, SIZE)
    assert check['num_dets'] > 0 and check['matched_share'] >= 0.9
