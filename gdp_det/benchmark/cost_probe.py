"""How much costlier per image one detector is than another, timed here in seconds.

``--dry-run`` of a comparison plans its time from rough per-image costs measured on the toy
RetinaNet, scaled by the comparison's own baseline once that is trained. Before that, a
Faster R-CNN or RTMDet plan would be priced as a RetinaNet; :func:`probe_cost_scale`
times a few training steps (forward, losses, backward) and inference steps of both
detectors on the same demo batch at each one's input size, random weights, one thread,
and returns the ratios.
"""
from __future__ import annotations

import time
from typing import Tuple

import torch
from mmengine.config import Config

from ..pipeline import gdp_config


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_seconds(cfg: Config, batch_size: int = 2, repeats: int = 5) -> Tuple[float, float]:
    """Median seconds per image of a training step and of an inference step of ``cfg``'s
    detector (random weights) on a demo batch at its input size."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.registry import DefaultScope
    h, w = gdp_config(cfg, 1.0, None, 1).model['input_size']
    # the config's scope, as a Runner would set it (nested types such as the data
    # preprocessor are looked up there); torch's default init: timing needs no other
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        model = MODELS.build(cfg.model)
    # demo labels are drawn from [1, num_classes): all 1, valid for any head of 2+ classes
    data = demo_mm_inputs(batch_size, image_shapes=[(3, h, w)] * batch_size, num_classes=2)

    def train_step():
        model.train()
        losses = model(**model.data_preprocessor(data, True), mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()

    def test_step():
        model.eval()
        with torch.no_grad():
            model.test_step(data)

    return (_timed(train_step, repeats) / batch_size, _timed(test_step, repeats) / batch_size)


def probe_cost_scale(cfg: Config, reference: Config, threads: int = 1
                     ) -> Tuple[float, float]:
    """(training, evaluation) seconds per image of ``cfg``'s detector over
    ``reference``'s, both timed now with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mine, ref = step_seconds(cfg), step_seconds(reference)
    finally:
        torch.set_num_threads(before)
    return mine[0] / ref[0], mine[1] / ref[1]
