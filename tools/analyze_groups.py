#!/usr/bin/env python
"""Print the channel groups GDP finds in a detector config (before any training).

    python tools/analyze_groups.py CONFIG [--input-size H W] [--json OUT]
"""
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import gdp_det  # noqa: E402
gdp_det.compat.apply()  # torch.load of mmengine checkpoints, mmdet:: configs, VOCMetric
from gdp_det.cli import (ArgumentParser, DictAction, check_writable_dir,  # noqa: E402
                         gdp_model_cfg, load_config, tool_main)


def group_costs(graph, flops) -> dict:
    """Per group: the mean FLOPs of removing one of its channels (the exact marginal
    cost, every member layer and every call counted), relative to the mean channel."""
    import numpy as np
    w = flops.channel_weights(np.ones(graph.num_channels, dtype=bool))
    w = w / w.mean()
    return {g.name: float(w[off:off + g.size].mean())
            for off, g in zip(graph.offsets, graph.groups)}


@tool_main
def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument('config')
    p.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--exclude', nargs='*', default=[])
    p.add_argument('--json', help='also write the groups as JSON here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from gdp_det.flops import FlopsModel
    register_all_modules()
    cfg = load_config(args.config, args.cfg_options)
    if args.json:
        check_writable_dir(osp.dirname(args.json) or '.', 'directory of --json')
    # analysis lists modules the tracer cannot follow instead of stopping at them
    model_cfg = gdp_model_cfg(cfg, args.input_size, args.exclude, on_unsupported='keep')
    if 'init_cfg' in model_cfg['detector'].get('backbone', {}):
        model_cfg['detector']['backbone']['init_cfg'] = None
    model = MODELS.build(model_cfg)
    graph = model.gdp_gates.graph
    flops = FlopsModel(graph)
    print(graph.summary())
    print(f'FLOPs (MACs) at {model.gdp_gates.trace.input_size}: {flops.full / 1e9:.3f} G')
    cost = group_costs(graph, flops)
    print('FLOPs one channel costs, summed over every layer of its group, relative to the '
          "mean channel (GDPHook's cost_power=1 weights the penalty by it): "
          + ', '.join(f'{n} {c:.2f}' for n, c in sorted(cost.items(), key=lambda x: -x[1])))
    print('channels kept unpruned because of: ' + '; '.join(sorted(graph.fixed_reasons)))
    if graph.unsupported:
        print('modules the tracer cannot follow channels through (their channels stay '
              'unpruned; on_unsupported="error" refuses them): '
              + '; '.join(f'{n}: {w}' for n, w in graph.unsupported.items()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(groups=[dict(name=g.name, channels=g.size,
                                        producers=sorted(g.producers),
                                        consumers=sorted(g.consumers),
                                        batchnorms=sorted(g.norms),
                                        depthwise=sorted(g.carriers),
                                        channel_cost=cost[g.name]) for g in graph.groups],
                           fixed_reasons=sorted(graph.fixed_reasons),
                           unsupported=graph.unsupported,
                           flops=flops.full), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
