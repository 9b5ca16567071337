"""How much costlier per image one detector is than another, timed here.

``--dry-run`` of a comparison plans its time from rough per-image costs measured on the toy
RetinaNet, scaled by the comparison's own baseline once that is trained. Before that, a
Faster R-CNN or RTMDet plan would be priced as a RetinaNet; :func:`probe_cost_scale`
times training steps (forward, losses, backward) and inference steps of both detectors
on demo batches at each one's input size, random weights, one thread, interleaved
(:func:`gdp_det.latency.interleaved_medians`), and returns the ratios.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from mmengine.config import Config

from ..latency import interleaved_medians
from ..pipeline import gdp_config

BATCH_SIZE = 2


def steps(cfg: Config) -> Tuple[Callable[[], None], Callable[[], None]]:
    """A training step and an inference step of ``cfg``'s detector (random weights) on a
    demo batch of ``BATCH_SIZE`` images at its input size."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.registry import DefaultScope
    h, w = gdp_config(cfg, 1.0, None, 1).model['input_size']
    # the config's scope, as a Runner would set it (nested types such as the data
    # preprocessor are looked up there); torch's default init: timing needs no other
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        model = MODELS.build(cfg.model)
    # demo labels are drawn from [1, num_classes): all 1, valid for any head of 2+ classes
    data = demo_mm_inputs(BATCH_SIZE, image_shapes=[(3, h, w)] * BATCH_SIZE, num_classes=2)

    def train_step():
        model.train()
        with torch.enable_grad():  # the timer runs under no_grad
            losses = model(**model.data_preprocessor(data, True), mode='loss')
            model.parse_losses(losses)[0].backward()

    def test_step():
        model.eval()
        model.test_step(data)

    return train_step, test_step


def probe_cost_scale(cfg: Config, reference: Config, threads: int = 1, repeats: int = 5
                     ) -> Tuple[float, float]:
    """(training, evaluation) seconds per image of ``cfg``'s detector over
    ``reference``'s, the four steps timed in turn with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fns = steps(cfg) + steps(reference)
        train, test, ref_train, ref_test = interleaved_medians(
            [lambda fn=fn: fn for fn in fns], 'cpu', repeats)
    finally:
        torch.set_num_threads(before)
    return train / ref_train, test / ref_test
