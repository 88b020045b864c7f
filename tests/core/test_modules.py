"""mlcore.modules: parameter counts and frozen parts that stay in eval mode (shared by foodrec and plantid)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcore.modules import FrozenPartsModule, count_parameters, set_frozen_parts


class Net(FrozenPartsModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def test_frozen_parts_stay_in_eval_and_get_no_gradient():
    net = Net()
    total = count_parameters(net)
    assert total == (3 * 4 * 9 + 4) + 8 + (16 + 4) + 8 + (8 + 2)
    set_frozen_parts(net, [net.backbone], scope=net.backbone)
    net.train()  # what a trainer does every epoch
    assert net.backbone_frozen and net.head.training and not any(m.training for m in net.backbone.modules())
    assert count_parameters(net, trainable_only=True) == count_parameters(net.head) == 10
    stats = net.backbone[1].running_mean.clone()
    net.backbone(torch.randn(2, 3, 5, 5))
    assert torch.equal(stats, net.backbone[1].running_mean)  # BatchNorm in eval: statistics untouched

    set_frozen_parts(net, [net.backbone[:2]], scope=net.backbone)  # partial: the first two modules only
    assert not net.backbone_frozen and net.backbone[2].training and not net.backbone[1].training
    assert count_parameters(net, trainable_only=True) == total - (3 * 4 * 9 + 4) - 8
    set_frozen_parts(net, [], scope=net.backbone)
    assert count_parameters(net, trainable_only=True) == total and all(m.training for m in net.modules())


def test_set_frozen_parts_refuses_a_plain_module():
    with pytest.raises(TypeError, match="FrozenPartsModule, got Linear"):
        set_frozen_parts(nn.Linear(2, 2), [])
