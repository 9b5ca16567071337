"""DistillHook: the distillation loss, and a training run whose student is pulled towards
a frozen teacher that no step changes."""
import copy

import pytest
import torch
import torch.nn as nn

from gdp_det.distill import DistillHook, dense_head, distill_loss


def test_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    gen = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 9, 8, 8, generator=gen) * 3, torch.randn(2, 9, 4, 4, generator=gen)]
    assert float(distill_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-4)
    student = [(t + torch.randn(t.shape, generator=gen)).requires_grad_() for t in teacher]
    loss = distill_loss(student, teacher)
    assert float(loss) > 0.01
    loss.backward()
    with torch.no_grad():  # a small step along the gradient brings the student closer
        stepped = [s - 0.5 * s.grad for s in student]
    assert float(distill_loss(stepped, teacher)) < float(loss)
    with pytest.raises(ValueError, match='differ in shape'):
        distill_loss([torch.zeros(1, 9, 8, 8)], [torch.zeros(1, 18, 8, 8)])


def test_heads_without_sigmoid_class_predictions_are_named():
    class Head(nn.Module):
        cls_out_channels, use_sigmoid_cls = 5, False

    class Detector(nn.Module):
        def __init__(self, head=None):
            super().__init__()
            if head is not None:
                self.rpn_head = head
    with pytest.raises(ValueError, match='softmax'):
        dense_head(Detector(Head()))
    with pytest.raises(ValueError, match='no dense head'):
        dense_head(Detector())
    with pytest.raises(ValueError, match='weight must be > 0'):
        DistillHook('x.py', 'x.pth', weight=0)


@pytest.mark.slow
def test_training_adds_the_loss_and_leaves_the_teacher_alone(make_toy_cfg, tmp_path):
    """Two iterations of the toy RetinaNet from a random init, distilled from a teacher
    of another seed: ``loss_distill`` is logged and positive, the teacher's weights are
    those of its checkpoint after training, and no optimizer holds them."""
    from mmdet.registry import MODELS
    from mmengine.runner import Runner
    cfg = make_toy_cfg(work_dir=str(tmp_path / 'run'), img_scale=(128, 128), batch_size=4,
                       max_epochs=1)
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.train_cfg.val_interval = 1000
    torch.manual_seed(1)
    teacher_state = MODELS.build(copy.deepcopy(cfg.model)).state_dict()
    torch.save(dict(state_dict=teacher_state), tmp_path / 'teacher.pth')
    cfg.dump(str(tmp_path / 'teacher.py'))
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(
        type='DistillHook', teacher_config=str(tmp_path / 'teacher.py'),
        teacher_checkpoint=str(tmp_path / 'teacher.pth'), weight=2.0)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, DistillHook))
    logged = runner.message_hub.get_scalar('train/loss_distill')
    assert logged is not None and logged.current() > 0
    for k, v in hook.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    held = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert not held & {id(p) for p in hook.teacher.parameters()}
    assert not any(k.startswith('teacher') for k in runner.model.state_dict())


@pytest.mark.slow
def test_gdp_phase_distils_through_its_cut_and_shrink(make_toy_cfg, tmp_path):
    """The gated model as the student: the loss is added through GDP's cut and the shrink
    after it, and the export is written as without distillation."""
    from mmengine.runner import Runner
    from mmdet.registry import MODELS
    from test_gdp_training import gdp_cfg
    plain = make_toy_cfg(img_scale=(128, 128), batch_size=4, max_epochs=1)
    plain.model.neck.out_channels = 64
    plain.model.bbox_head.update(in_channels=64, feat_channels=64)
    torch.manual_seed(1)
    torch.save(dict(state_dict=MODELS.build(copy.deepcopy(plain.model)).state_dict()),
               tmp_path / 'teacher.pth')
    plain.dump(str(tmp_path / 'teacher.py'))
    cfg = gdp_cfg(make_toy_cfg, tmp_path / 'gdp', epochs=6, flops_target=0.6, lambda_span=0.25,
                  cut_rate_factor=1.0)  # (a short run: the cut at lambda's full rate)
    cfg.custom_hooks.append(dict(type='DistillHook', teacher_config=str(tmp_path / 'teacher.py'),
                                 teacher_checkpoint=str(tmp_path / 'teacher.pth')))
    runner = Runner.from_cfg(cfg)
    runner.train()
    gdp = next(h for h in runner.hooks if type(h).__name__ == 'GDPHook')
    assert gdp.shrink is not None  # the cut was made and the model shrunk
    assert runner.message_hub.get_scalar('train/loss_distill').current() > 0
    assert (tmp_path / 'gdp' / 'pruned' / 'prune_report.json').is_file()
