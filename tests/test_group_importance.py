"""Torch-Pruning's criteria on our channel groups (gdp_det.benchmark.group_importance):
the scores equal Torch-Pruning's own on the groups both find, the cut takes the lowest
scores, and the comparison falls back to it where Torch-Pruning cannot trace."""
import copy

import numpy as np
import pytest
import torch

from gdp_det.benchmark.group_importance import alive_for, group_scores, prune_groups



def _randomized(gated):
    """A copy of ``gated`` whose channels differ: BN scales spread (a random init sets
    them all to 1) and each conv's output channels scaled by 0.2-2."""
    model = copy.deepcopy(gated)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 - 1)
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(0.2 + 1.8 * torch.rand(m.out_channels, 1, 1, 1, generator=gen))
    return model


@pytest.mark.parametrize('criterion', ['l1', 'bn'])
def test_scores_equal_torch_pruning_on_the_groups_both_find(gated_toy_retinanet, criterion):
    """A plain block's group (conv1 -> bn1 -> conv2) and the stem's residual group (five
    producers, their BNs and every consumer of layer1's stream): our scores are
    Torch-Pruning 1.6's normalized group importance of the same channels."""
    tp = pytest.importorskip('torch_pruning')
    from mmdet.registry import MODELS
    from gdp_det.benchmark.compare_methods import TensorMode, _bn_scale_or_l1
    gated = _randomized(gated_toy_retinanet[0])
    det = MODELS.build(copy.deepcopy(gated_toy_retinanet[1].model['detector'])).eval()
    det.load_state_dict(gated.state_dict(), strict=False)
    dg = tp.DependencyGraph().build_dependency(TensorMode(det),
                                               example_inputs=torch.randn(1, 3, 224, 224))
    imp = tp.importance.GroupMagnitudeImportance(p=1) if criterion == 'l1' \
        else _bn_scale_or_l1()
    ours = group_scores(gated, criterion)
    names = [g.name for g in gated.gdp_gates.graph.groups]
    for layer in ('backbone.layer1.0.conv1', 'backbone.conv1'):
        module = dict(det.named_modules())[layer]
        group = dg.get_pruning_group(module, tp.prune_conv_out_channels,
                                     idxs=list(range(module.out_channels)))
        theirs = imp(group).double().numpy()
        mine = ours[names.index(layer)]
        assert np.ptp(mine) > 0.1  # the test can tell channels apart
        np.testing.assert_allclose(mine, theirs, rtol=1e-4)


def test_uniform_cut_takes_each_groups_lowest_and_global_the_lowest_overall():
    scores = [np.array([3.0, 1.0, 2.0, 0.5]), np.array([0.1, 0.2]), np.array([5.0, 4.0])]
    # uniform 0.5: two of the first group, one of each other
    assert alive_for(scores, 0.5, False).tolist() == [True, False, True, False,
                                                        False, True, True, False]
    # global 0.5 of 8: the 4 lowest (0.1, 0.2, 0.5, 1.0), but each group keeps one
    assert alive_for(scores, 0.5, True).tolist() == [True, False, True, False,
                                                       False, True, True, True]
    # a group never loses more than max_ratio of its channels
    assert alive_for(scores, 1.0, False, max_ratio=0.5).reshape(-1).sum() == 2 + 1 + 1


@pytest.mark.slow
def test_faster_rcnn_gets_torch_pruning_criteria_on_our_groups(make_toy_cfg, tmp_path):
    """Torch-Pruning cannot trace a two-stage detector through ``_forward``; the
    comparison's run then applies its criterion to our groups: FLOPs within the budget,
    the lowest-L1 channels gone, the export lossless (checked by the export), and the
    run labelled with why."""
    from conftest import FASTER_RCNN_CFG
    from mmdet.registry import MODELS
    from gdp_det.benchmark import compare as C
    from gdp_det.benchmark import compare_methods as cm
    cfg = make_toy_cfg(FASTER_RCNN_CFG)
    torch.manual_seed(0)
    state = MODELS.build(copy.deepcopy(cfg.model)).state_dict()
    with pytest.raises(Exception):  # (ImportError where Torch-Pruning is not installed)
        cm.prune_torch_pruning(cfg, state, 0.5, (224, 224), 'l1', False, 0)
    ckpt = tmp_path / 'baseline.pth'
    torch.save(dict(state_dict=state), ckpt)
    comparison = C.Comparison(cfg, str(tmp_path / 'work'), C.Settings())
    comparison._base = dict(checkpoint=str(ckpt))
    method = {m.name: m for m in cm.METHODS}['tp_l1_uniform']
    pruned = comparison._prune(C.Run(method, 0.5, 0), cfg, str(tmp_path / 'run'))
    assert pruned['label'] == 'Torch-Pruning L1, uniform (its criterion on our channel groups)'
    assert pruned['note'] and pruned['epochs'] == 0
    model = cm.build_model(pruned['config'], pruned['checkpoint'])
    base = cm.build_model(comparison.base_config, str(ckpt))
    # counted independently (FlopCounterMode); the RoI head's share depends on the
    # proposal count, hence the comparison's budget slack
    from gdp_det.benchmark.compare_summary import BUDGET_SLACK
    ratio = cm.counted_flops(model, (224, 224)) / cm.counted_flops(base, (224, 224))
    assert 0.4 < ratio <= 0.5 + BUDGET_SLACK['flops']
    # the same cut made directly: within the budget of our FLOPs model, and the
    # channels with the lowest scores are the gated-off ones
    mcfg, gated = comparison._gated(cfg, state)
    assert 0.45 < prune_groups(gated, 0.5, 'l1', False) <= 0.5
    a = gated.gdp_gates.a.detach().numpy()
    graph = gated.gdp_gates.graph
    for off, grp, s in zip(graph.offsets, graph.groups, group_scores(gated, 'l1')):
        kept = a[off:off + grp.size] > 0
        if 0 < kept.sum() < grp.size:
            assert s[~kept].max() <= s[kept].min()
