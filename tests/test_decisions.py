"""gdp_det.decisions: a selection that flips at a near-tie between two models equal to
float rounding is replayed (the outputs then match); a selection made on inputs that
really differ is caught there, even when the outputs match after the replay."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.ops import nms

from gdp_det.decisions import DecisionLog, relative_difference


class TopK(nn.Module):
    """Scores 4 queries, returns the features of the best two, best first."""

    def __init__(self, tilt: float):
        super().__init__()
        self.score = nn.Linear(2, 1, bias=False)
        self.score.weight.data = torch.tensor([[1.0, tilt]])

    def forward(self, x):
        return x[self.score(x)[:, 0].topk(2).indices]


# queries 0 and 1 score 1 + tilt * (2 or 3): which comes first depends on the sign of tilt
QUERIES = torch.tensor([[1.0, 2.0], [1.0, 3.0], [0.5, 0.0], [0.0, 0.0]])


def replayed(model_a, model_b, *inputs):
    log = DecisionLog()
    with log.record():
        a = model_a(*inputs)
    with log.replay():
        b = model_b(*inputs)
    with log.compare():
        model_a(*inputs)
    return a, b, log


def test_near_tie_flip_is_replayed_and_its_inputs_compared():
    a, b = TopK(-1e-7), TopK(1e-7)  # scores equal to 5e-7: the order of 0 and 1 flips
    assert relative_difference(a(QUERIES), b(QUERIES)) > 0.3  # unreplayed: rows swapped
    out_a, out_b, log = replayed(a, b, QUERIES)
    assert torch.equal(out_a, out_b)
    assert log.replayed == 1 and log.diverged is None
    assert 1e-7 < log.input_diff < 1e-6  # the scores the selection was made on


def test_selection_on_wrong_inputs_is_caught_though_outputs_match():
    a, b = TopK(-1e-7), TopK(0.1)  # b's scores are wrong, only the selection reads them
    out_a, out_b, log = replayed(a, b, QUERIES)
    assert torch.equal(out_a, out_b)  # replayed, the outputs match...
    assert log.replayed == 1 and log.input_diff > 0.05  # ...the selection's inputs do not


def test_no_flip_no_replay():
    a = TopK(-1e-7)
    _, _, log = replayed(a, copy.deepcopy(a), QUERIES)
    assert log.decisions and log.decisions[0].op == 'topk'
    assert log.replayed == 0 and log.input_diff == 0.0


class NMS(nn.Module):
    """mmcv's NMS (a compiled ``autograd.Function``) over two overlapping boxes."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, boxes):
        scores = torch.tensor([0.5, 0.5 + self.shift])
        return nms(boxes, scores, 0.5)[0]


def test_compiled_nms_is_replayed():
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.]])
    a, b = NMS(-1e-7), NMS(1e-7)  # each keeps another box
    assert not torch.equal(a(boxes), b(boxes))
    out_a, out_b, log = replayed(a, b, boxes)
    assert torch.equal(out_a, out_b)
    assert [log.decisions[i].op for i in log.flipped] == ['NMSop']
    assert log.input_diff < 1e-6


class Branchy(nn.Module):
    """Takes another path on a value read back to Python (no decision to replay)."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, x):
        if float(x.sum()) * self.sign > 0:
            return x.argmax()
        return x


def test_another_path_is_named():
    _, _, log = replayed(Branchy(1.0), Branchy(-1.0), torch.ones(3))
    assert log.diverged == '1 decision(s) fewer than the reference, the first missing one argmax'


def test_relative_difference():
    x = torch.tensor([2.0, float('-inf'), 0.0])
    assert relative_difference(x, torch.tensor([2.0, float('-inf'), 1e-3])) == pytest.approx(5e-4)
    assert relative_difference(x, x[:2]) == float('inf')
    nan = torch.tensor([float('nan'), 1.0])
    assert relative_difference(nan, nan.clone()) == float('inf')  # NaN verifies nothing
