import pytest
import torch

from nectargan_core.settings import LRSchedule
from nectargan_core.training.schedule import apply_learning_rate, learning_rate


def test_default_schedule_reference_values():
    s = LRSchedule()
    assert learning_rate(s, 1) == 2e-4
    assert learning_rate(s, 100) == 2e-4
    assert learning_rate(s, 101) == pytest.approx(2e-4 * 100 / 101, rel=1e-12)
    assert learning_rate(s, 200) == pytest.approx(2e-4 / 101, rel=1e-12)


def test_warm_up_rises_towards_target():
    s = LRSchedule(epochs=2, epochs_decay=3, initial=1e-4, target=3e-4)
    lrs = [learning_rate(s, e) for e in range(1, 6)]
    assert lrs == pytest.approx([1e-4, 1e-4, 1.5e-4, 2e-4, 2.5e-4], rel=1e-12)
    from_zero = LRSchedule(epochs=0, epochs_decay=3, initial=0.0, target=4e-4)
    assert [learning_rate(from_zero, e) for e in (1, 3)] == pytest.approx([1e-4, 3e-4], rel=1e-12)


def test_no_decay_epochs_keeps_the_initial_rate():
    s = LRSchedule(epochs=5, epochs_decay=0)
    assert {learning_rate(s, e) for e in range(1, 6)} == {2e-4}


def test_apply_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b]}], lr=1.0)
    lr = apply_learning_rate(opt, LRSchedule(), 200)
    assert lr == pytest.approx(2e-4 / 101)
    assert [g["lr"] for g in opt.param_groups] == [lr, lr]
