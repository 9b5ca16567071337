"""A module the tracer cannot follow channels through keeps its channels unpruned by
default, with a warning naming it (a real module path ``exclude`` accepts) and the share
of FLOPs that cannot be pruned; ``on_unsupported='error'`` stops with a clear error
naming the two ways out (exclude it, or keep its channels), which both work."""
import pytest
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.model import BaseModule

from gdp_det.api import prune_and_export
from gdp_det.cli import load_config
from gdp_det.detector import UnsupportedModuleError, unprunable_share
from gdp_det.flops import FlopsModel
from tools.prune import main as prune_main, randomize_gates


register_all_modules()


@MODELS.register_module(force=True)
class ShuffleTestNet(BaseModule):
    """conv -> conv -> channel shuffle (a view that splits the channel dim) -> conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.conv3 = nn.Conv2d(32, 32, 3, 2, 1)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return x, F.relu(self.conv3(x))


def config():
    cfg = load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone = dict(type='ShuffleTestNet')
    cfg.model.neck.update(in_channels=[32, 32], out_channels=16, start_level=0,
                          add_extra_convs='on_output', num_outs=3)
    cfg.model.bbox_head.update(in_channels=16, feat_channels=16, stacked_convs=1)
    cfg.model.bbox_head.anchor_generator.strides = [4, 8, 16]
    return cfg


def gdp_model(cfg, **kw):
    return MODELS.build(dict(type='GDPDetector', detector=cfg.model.to_dict(),
                             input_size=(64, 64), **kw))


def members(model):
    g = model.gdp_gates.graph.groups
    return {n for grp in g for d in (grp.producers, grp.consumers, grp.norms) for n in d}


def test_unsupported_module_is_named_with_the_options():
    with pytest.raises(UnsupportedModuleError) as err:
        gdp_model(config(), on_unsupported='error')
    msg = str(err.value)
    assert 'backbone: view that mixes the channel dim' in msg
    assert "exclude=['backbone']" in msg and '--on-unsupported keep' in msg


def test_default_keeps_with_a_warning_naming_module_and_flops_share(monkeypatch):
    import mmengine.logging
    logged = []
    monkeypatch.setattr(mmengine.logging, 'print_log', lambda msg, **kw: logged.append(msg))
    model = gdp_model(config())
    graph = model.gdp_gates.graph
    assert graph.unsupported == {'backbone': 'view that mixes the channel dim'}
    kept = [m for m in logged if 'cannot follow' in m]
    assert len(kept) == 1 and 'backbone: view that mixes the channel dim' in kept[0]
    assert f'{unprunable_share(graph):.1%} of the FLOPs cannot be pruned' in kept[0]
    assert "exclude=['backbone']" in kept[0] and "on_unsupported='error'" in kept[0]
    assert not any('not understood by the tracer' in m for m in logged)  # said once


def test_unprunable_share_is_the_flops_of_fully_fixed_layers():
    graph = gdp_model(config(), exclude=['backbone']).gdp_gates.graph
    per_call = FlopsModel(graph).per_call()
    backbone = sum(f for c, f in zip(graph.calls, per_call) if c.name.startswith('backbone'))
    assert unprunable_share(graph) == pytest.approx(backbone / per_call.sum())
    assert 0.05 < unprunable_share(graph) < 0.95


def test_excluding_the_module_prunes_the_rest_losslessly(tmp_path):
    model = gdp_model(config(), exclude=['backbone'])
    assert not any(n.startswith('backbone') for n in members(model))
    assert any(n.startswith('neck') for n in members(model))
    randomize_gates(model.gdp_gates, 0.5, seed=0)
    cfg = config()
    cfg.model = dict(type='GDPDetector', detector=cfg.model.to_dict(), input_size=(64, 64),
                     exclude=['backbone'])
    _, report, _ = prune_and_export(cfg, model, str(tmp_path / 'out'), name='shuffle')
    assert report['max_rel_output_diff'] < 1e-5
    assert report['flops_ratio'] < 1


def test_keep_unsupported_keeps_only_the_touched_channels():
    model = gdp_model(config())
    producers = {p for g in model.gdp_gates.graph.groups for p in g.producers}
    assert 'backbone.conv1' in producers  # before the shuffle: still prunable
    assert 'backbone.conv2' not in producers  # its channels are shuffled


def test_prune_cli_keeps_by_default_and_exits_2_with_on_unsupported_error(tmp_path, capsys):
    path = tmp_path / 'shuffle.py'
    config().dump(str(path))
    out = tmp_path / 'out'
    rc = prune_main([str(path), '--random-gates', '0.5', '--out-dir', str(out),
                     '--input-size', '64', '64', '--on-unsupported', 'error'])
    assert rc == 2 and 'mixes the channel dim' in capsys.readouterr().err
    assert not out.exists()
    rc = prune_main([str(path), '--random-gates', '0.5', '--out-dir', str(out),
                     '--input-size', '64', '64', '--verify'])
    assert rc == 0 and (out / 'shuffle_pruned.pth').is_file()


def test_analyze_groups_lists_unsupported_modules(tmp_path, capsys):
    from tools.analyze_groups import main as analyze_main
    path = tmp_path / 'shuffle.py'
    config().dump(str(path))
    assert analyze_main([str(path), '--input-size', '64', '64']) == 0
    assert 'backbone: view that mixes the channel dim' in capsys.readouterr().out
